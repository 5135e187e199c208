//! The Pair service: one pairing session at a time, driven by the proxy relaying the peer's
//! messages (`ppn pair`). The CPace scalar, the session key and the pairwise secret never leave
//! this module; the proxy sees only the messages it relays, the peer's public identity and the
//! SAS. Nothing reaches the ledger until the operator, having compared the SAS on both nodes,
//! says so with `PairDecide`; then this node adds the peer to its root set (durably) and authors
//! a NodeAdmitted record for it.

use alloc::format;
use alloc::string::String;
use ppn_journal::Storage;
use ppn_ledger::{Body, Ledger, Record};
use ppn_pairing::{Code, Identity, Initiator, PairError, Paired, Phase, RANDOM_LEN, Responder};
use ppn_wire::service::{
    IngestOutcome, PAIR_MESSAGE_MAX, PairBegin, PairDecide, PairDecided, PairProgress, PairRole, PairStep, PairedPeer,
};
use ppn_wire::{ByteArray, ErrorCode, NodeId};

/// A session not finished within this time is dropped (the operator starts again with a new
/// code).
pub const SESSION_TIMEOUT_MS: u64 = 5 * 60 * 1000;

/// A refused pairing request: the wire error code and a detail for the operator.
pub type Refused = (ErrorCode, String);

/// Random bytes for a session; the platform's entropy source (getrandom, virtio-rng).
pub trait Entropy: Send {
    /// Fills `out`, or says why it cannot.
    fn fill(&mut self, out: &mut [u8]) -> Result<(), String>;
}

enum State {
    Idle,
    // Boxed: the sessions hold the CPace state, several times the size of the other states.
    Initiating(alloc::boxed::Box<Initiator>),
    Responding(alloc::boxed::Box<Responder>),
    /// Confirmed by the ceremony; waiting for the operator.
    Awaiting(PairedPeer),
}

/// The pairing state of one TCB.
pub struct Pairing {
    state: State,
    started_ms: u64,
    entropy: Option<alloc::boxed::Box<dyn Entropy>>,
}

impl core::fmt::Debug for Pairing {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        let state = match &self.state {
            State::Idle => "idle",
            State::Initiating(_) => "initiating",
            State::Responding(_) => "responding",
            State::Awaiting(_) => "awaiting the operator",
        };
        f.debug_struct("Pairing").field("state", &state).finish_non_exhaustive()
    }
}

fn refused(code: ErrorCode, detail: impl Into<String>) -> Refused {
    (code, detail.into())
}

fn pair_error(e: PairError) -> Refused {
    refused(ErrorCode::Rejected, format!("{e}; start again with a new code"))
}

fn message(bytes: &[u8]) -> heapless::Vec<u8, PAIR_MESSAGE_MAX> {
    // Every pairing message is at most MAX_MESSAGE_LEN = PAIR_MESSAGE_MAX bytes.
    heapless::Vec::from_slice(bytes).unwrap_or_default()
}

fn peer_of(p: &Paired) -> PairedPeer {
    PairedPeer {
        node_id: NodeId(ByteArray(p.peer.node_id)),
        signing_key: ByteArray(p.peer.signing_key),
        wireguard_key: ByteArray(p.peer.wireguard_key),
        sas: p.sas.value(),
    }
}

impl Pairing {
    /// No entropy source: every `PairBegin` is refused.
    pub fn new(entropy: Option<alloc::boxed::Box<dyn Entropy>>) -> Self {
        Self { state: State::Idle, started_ms: 0, entropy }
    }

    fn expire(&mut self, uptime_ms: u64) -> bool {
        let live = !matches!(self.state, State::Idle);
        if live && uptime_ms.saturating_sub(self.started_ms) > SESSION_TIMEOUT_MS {
            self.state = State::Idle;
            return true;
        }
        false
    }

    /// Starts a session, dropping any earlier one.
    pub fn begin(&mut self, b: &PairBegin, me: (NodeId, [u8; 32]), uptime_ms: u64) -> Result<PairProgress, Refused> {
        self.state = State::Idle;
        let code = Code::parse(&b.code).map_err(|e| refused(ErrorCode::Rejected, format!("pairing code: {e}")))?;
        let identity = Identity { node_id: me.0.0.0, signing_key: me.1, wireguard_key: b.wireguard_key.0 };
        let Some(entropy) = self.entropy.as_mut() else {
            return Err(refused(ErrorCode::NotImplemented, "this TCB has no entropy source for pairing"));
        };
        let mut random = zeroize::Zeroizing::new([0u8; RANDOM_LEN]);
        entropy.fill(&mut random[..]).map_err(|e| refused(ErrorCode::Internal, format!("entropy: {e}")))?;
        self.started_ms = uptime_ms;
        match b.role {
            PairRole::Initiator => {
                let (session, hello) = Initiator::start(&code, &identity, &random).map_err(pair_error)?;
                self.state = State::Initiating(alloc::boxed::Box::new(session));
                Ok(PairProgress { message: message(&hello), paired: None })
            }
            PairRole::Responder => {
                let session = Responder::new(&code, &identity, &random).map_err(pair_error)?;
                self.state = State::Responding(alloc::boxed::Box::new(session));
                Ok(PairProgress { message: heapless::Vec::new(), paired: None })
            }
            PairRole::Unknown(n) => Err(refused(ErrorCode::Rejected, format!("pairing role {n} is not known"))),
        }
    }

    /// Hands the session the peer's next message. Any failure ends the session.
    pub fn step(&mut self, s: &PairStep, uptime_ms: u64) -> Result<PairProgress, Refused> {
        if self.expire(uptime_ms) {
            return Err(refused(ErrorCode::Rejected, "the pairing session timed out; start again with a new code"));
        }
        let state = core::mem::replace(&mut self.state, State::Idle);
        match state {
            State::Initiating(mut session) => {
                let (paired, confirm) = session.on_reply(&s.message).map_err(pair_error)?;
                let peer = peer_of(&paired);
                self.state = State::Awaiting(peer.clone());
                Ok(PairProgress { message: message(&confirm), paired: Some(peer) })
            }
            State::Responding(mut session) => match session.phase() {
                Phase::AwaitingHello => {
                    let reply = session.on_hello(&s.message).map_err(pair_error)?;
                    self.state = State::Responding(session);
                    Ok(PairProgress { message: message(&reply), paired: None })
                }
                _ => {
                    let paired = session.on_confirm(&s.message).map_err(pair_error)?;
                    let peer = peer_of(&paired);
                    self.state = State::Awaiting(peer.clone());
                    Ok(PairProgress { message: heapless::Vec::new(), paired: Some(peer) })
                }
            },
            other => {
                self.state = other;
                Err(refused(ErrorCode::Rejected, "no pairing session is waiting for a message"))
            }
        }
    }

    /// The operator's verdict. On `admit`, authors NodeAdmitted for the peer.
    pub fn decide<S: Storage>(
        &mut self,
        d: &PairDecide,
        ledger: &mut Ledger<S>,
        uptime_ms: u64,
        now_unix_s: u64,
    ) -> Result<PairDecided, Refused> {
        if self.expire(uptime_ms) {
            return Err(refused(ErrorCode::Rejected, "the pairing session timed out; start again with a new code"));
        }
        let State::Awaiting(peer) = &self.state else {
            return Err(refused(ErrorCode::Rejected, "no paired peer is waiting for a decision"));
        };
        if peer.node_id != d.peer || peer.sas != d.sas {
            return Err(refused(ErrorCode::Rejected, "the decision names another peer or SAS than this session's"));
        }
        let peer = peer.clone();
        self.state = State::Idle;
        if !d.admit {
            return Ok(PairDecided { record_id: None, record: heapless::Vec::new() });
        }
        if !d.peer_record.is_empty() {
            match Record::decode(&d.peer_record) {
                Ok(r) if r.author == peer.node_id => {}
                _ => return Err(refused(ErrorCode::Rejected, "the peer record is not a record signed by the peer")),
            }
        }
        // The peer becomes a root of this replica (so the two accept each other's records from
        // now on), and an admission record tells the rest of the fleet, with its mesh key.
        ledger.add_root(&peer.signing_key.0).map_err(|r| refused(r.code, r.detail))?;
        if !d.peer_record.is_empty() {
            match ledger.ingest(&d.peer_record).map_err(|r| refused(r.code, r.detail))? {
                IngestOutcome::Accepted | IngestOutcome::Duplicate => {}
                other => return Err(refused(ErrorCode::Rejected, format!("the peer's admission record: {other:?}"))),
            }
        }
        let body = Body::NodeAdmitted { key: peer.signing_key.0, wireguard: peer.wireguard_key.0 };
        // The first to decide signs without parents, so the peer (who has none of this node's
        // history) accepts it at once; the second signs on its heads, which then include the
        // first's record, so its own record descends from its admission.
        let id = if d.peer_record.is_empty() {
            ledger.author_detached(body, now_unix_s)
        } else {
            ledger.author(body, now_unix_s)
        }
        .map_err(|r| refused(r.code, r.detail))?;
        let record =
            ledger.dag().get(&id).map(|r| heapless::Vec::from_slice(&r.bytes).unwrap_or_default()).unwrap_or_default();
        Ok(PairDecided { record_id: Some(id), record })
    }
}
