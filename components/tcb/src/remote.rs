//! The ledger port's two ends (`ppn_layout::ledger_port`): [`serve`] answers a port request
//! from a [`LedgerPort`] (the seL4 ledger PD runs it on its ledger, for the lender PD's and the
//! attest PD's calls, each on its own channel), and [`RemoteLedger`] is a [`LedgerPort`] that
//! asks across a [`PortTransport`] (the lender PD's protected procedure call);
//! [`fetch_attester`] is the attest PD's one call for its key.
//!
//! Failures of the port itself (a broken transport, a reply that does not decode) are answered
//! so that nothing new is lent and nothing lent is ended: `borrower_trusted` is false (a
//! reserve is refused), `node_revoked` and `own_grant_revoked` are false (the revocation is in
//! the ledger and the next sync that reaches it ends the lease), `issue_lease_grant` is an
//! `Internal` refusal (the lease is released, nobody has a token).

use alloc::format;
use alloc::string::String;
use ppn_attest::Attester;
use ppn_attest::{CERT_LEN, KeyCert};
use ppn_layout::ledger_port::{self, ATTEST_CERT_LEN, Caller, MAX_MESSAGE, Op, PortError, PortReply, PortRequest};
use ppn_wire::service::{Grant, Token};
use ppn_wire::{ErrorCode, NodeId};
use zeroize::Zeroizing;

use crate::attest::ProvisioningLog;
use crate::lender::{LedgerPort, Refused};

const _: () = assert!(ATTEST_CERT_LEN == CERT_LEN, "the port's certificate is ppn-attest's");

/// Answers one port request in `request` from `caller` with the ledger `ledger`, whose clock
/// reads `now_unix_s`; writes the reply into `out` (at least [`MAX_MESSAGE`] bytes) and returns
/// its length. A request that does not decode is answered with a `BadFrame` refusal, an op the
/// caller may not ask ([`Caller::allows`]) with a `Rejected` one.
///
/// `attester` is the attestation key waiting for its handoff: an `AttestKey` request takes it,
/// and writes its secret into `out` (which the caller wipes once the reply is passed on); a
/// second request finds nothing and is refused.
pub fn serve(
    ledger: &mut (impl LedgerPort + ProvisioningLog),
    caller: Caller,
    attester: &mut Option<Attester>,
    now_unix_s: u64,
    request: &[u8],
    out: &mut [u8],
) -> usize {
    let (op, detail);
    let reply = match ledger_port::decode_request(request) {
        Err(e) => {
            // Echo the op byte when it was one, so the caller can pair the refusal with its call.
            op = request.get(5).and_then(|&b| Op::from_u8(b)).unwrap_or(Op::NodeId);
            detail = format!("{e}");
            PortReply::Refused { code: ErrorCode::BadFrame, detail: &detail }
        }
        Ok(req) if !caller.allows(req.op()) => {
            op = req.op();
            detail = format!("{op:?} is not the {} PD's to ask", caller.name());
            PortReply::Refused { code: ErrorCode::Rejected, detail: &detail }
        }
        Ok(req) => {
            op = req.op();
            match req {
                PortRequest::AttestKey => match attester.take() {
                    Some(a) => {
                        let (secret, cert) = a.into_handoff();
                        let cert = Zeroizing::new(cert.encode());
                        let reply = PortReply::AttestKey { secret: &secret, cert: &cert };
                        return ledger_port::encode_reply(op, &reply, out).unwrap_or(0);
                    }
                    None => {
                        detail = String::from("the attestation key was handed over already");
                        PortReply::Refused { code: ErrorCode::Rejected, detail: &detail }
                    }
                },
                PortRequest::RecordProvisioning { root_hash, statement } => {
                    // The ledger's clock dates the record.
                    match ledger.record_provisioning(root_hash, statement, now_unix_s) {
                        Ok(id) => PortReply::Record(id),
                        Err((code, d)) => {
                            detail = d;
                            PortReply::Refused { code, detail: &detail }
                        }
                    }
                }
                PortRequest::NodeId => PortReply::NodeId(ledger.node_id()),
                PortRequest::Now => PortReply::Now(now_unix_s),
                PortRequest::BorrowerTrusted(n) => PortReply::Answer(ledger.borrower_trusted(&n)),
                PortRequest::NodeRevoked(n) => PortReply::Answer(ledger.node_revoked(&n)),
                PortRequest::OwnGrantRevoked(s) => PortReply::Answer(ledger.own_grant_revoked(s)),
                PortRequest::IssueLeaseGrant { borrower, lease, expires_unix_s, now_unix_s: _ } => {
                    // The ledger's clock decides, not the caller's.
                    match ledger.issue_lease_grant(borrower, lease, expires_unix_s, now_unix_s) {
                        Ok(g) => {
                            let n = ledger_port::encode_reply(
                                op,
                                &PortReply::Grant { sequence: g.sequence, token: &g.token },
                                out,
                            );
                            return n.unwrap_or(0);
                        }
                        Err((code, d)) => {
                            detail = d;
                            PortReply::Refused { code, detail: &detail }
                        }
                    }
                }
            }
        }
    };
    // Every reply fits MAX_MESSAGE (the port's own assertions); `out` is at least that.
    ledger_port::encode_reply(op, &reply, out).unwrap_or(0)
}

/// Carries one port request to the ledger and its reply back.
pub trait PortTransport {
    /// Sends `request`, writes the reply into `reply` (at least [`MAX_MESSAGE`] bytes); returns
    /// its length.
    fn call(&self, request: &[u8], reply: &mut [u8]) -> Result<usize, String>;
}

/// The ledger, asked across the port.
#[derive(Debug)]
pub struct RemoteLedger<T: PortTransport> {
    transport: T,
    node_id: NodeId,
}

/// Why a port call failed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum CallError {
    /// The transport failed, or the reply did not decode.
    Port(String),
    /// The ledger refused.
    Refused(ErrorCode, String),
}

impl CallError {
    /// As the service's refusal: the ledger's own, or `Internal` when the port failed.
    fn refused(self) -> Refused {
        match self {
            CallError::Refused(code, d) => (code, d),
            CallError::Port(d) => (ErrorCode::Internal, d),
        }
    }
}

impl core::fmt::Display for CallError {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            CallError::Port(e) => f.write_str(e),
            CallError::Refused(code, d) => write!(f, "the ledger refused ({code:?}): {d}"),
        }
    }
}

fn call_with<T: PortTransport, R>(
    transport: &T,
    req: &PortRequest,
    f: impl FnOnce(PortReply<'_>) -> Result<R, PortError>,
) -> Result<R, CallError> {
    let port = |e: PortError| CallError::Port(format!("{e}"));
    let mut msg = [0u8; MAX_MESSAGE];
    let n = ledger_port::encode_request(req, &mut msg).map_err(port)?;
    let mut reply = [0u8; MAX_MESSAGE];
    let len = transport.call(&msg[..n], &mut reply).map_err(CallError::Port)?;
    let got = reply.get(..len).ok_or_else(|| CallError::Port(format!("reply of {len} bytes")))?;
    match ledger_port::decode_reply(req.op(), got).map_err(port)? {
        PortReply::Refused { code, detail } => Err(CallError::Refused(code, String::from(detail))),
        r => f(r).map_err(port),
    }
}

fn unexpected(op: Op) -> PortError {
    PortError::BadLength { op, len: 0 }
}

impl<T: PortTransport> RemoteLedger<T> {
    /// Asks the ledger for this node's id once; every later call goes through `transport`.
    pub fn connect(transport: T) -> Result<Self, CallError> {
        let node_id = call_with(&transport, &PortRequest::NodeId, |r| match r {
            PortReply::NodeId(n) => Ok(n),
            _ => Err(unexpected(Op::NodeId)),
        })?;
        Ok(Self { transport, node_id })
    }

    /// The ledger's clock (the TCB's one wall clock), Unix seconds.
    pub fn now_unix_s(&self) -> Result<u64, CallError> {
        call_with(&self.transport, &PortRequest::Now, |r| match r {
            PortReply::Now(t) => Ok(t),
            _ => Err(unexpected(Op::Now)),
        })
    }

    fn ask(&self, req: PortRequest) -> Result<bool, CallError> {
        call_with(&self.transport, &req, |r| match r {
            PortReply::Answer(b) => Ok(b),
            _ => Err(unexpected(req.op())),
        })
    }

    pub fn transport(&self) -> &T {
        &self.transport
    }
}

/// The attest PD's call for its key: asks the ledger for the attestation key (once per boot)
/// and rebuilds the attester, checking that the certificate is for this key. The reply, which
/// held the secret, is wiped; the caller wipes the port's shared page.
pub fn fetch_attester<T: PortTransport>(transport: &T) -> Result<Attester, CallError> {
    let port = |e: PortError| CallError::Port(format!("{e}"));
    let mut msg = [0u8; MAX_MESSAGE];
    let n = ledger_port::encode_request(&PortRequest::AttestKey, &mut msg).map_err(port)?;
    let mut reply = Zeroizing::new([0u8; MAX_MESSAGE]);
    let len = transport.call(&msg[..n], &mut reply[..]).map_err(CallError::Port)?;
    let got = reply.get(..len).ok_or_else(|| CallError::Port(format!("reply of {len} bytes")))?;
    match ledger_port::decode_reply(Op::AttestKey, got).map_err(port)? {
        PortReply::AttestKey { secret, cert } => {
            let cert =
                KeyCert::decode(cert).map_err(|e| CallError::Port(format!("attestation key certificate: {e}")))?;
            Attester::with_cert(&Zeroizing::new(*secret), cert)
                .map_err(|e| CallError::Port(format!("attestation key: {e}")))
        }
        PortReply::Refused { code, detail } => Err(CallError::Refused(code, String::from(detail))),
        _ => Err(port(unexpected(Op::AttestKey))),
    }
}

impl<T: PortTransport> ProvisioningLog for RemoteLedger<T> {
    /// Asks the ledger to author the record; the ledger's clock dates it, not `now_unix_s`.
    fn record_provisioning(
        &mut self,
        root_hash: [u8; 32],
        statement: [u8; 32],
        _now_unix_s: u64,
    ) -> Result<[u8; 32], (ErrorCode, String)> {
        let req = PortRequest::RecordProvisioning { root_hash, statement };
        let r = call_with(&self.transport, &req, |r| match r {
            PortReply::Record(id) => Ok(id),
            _ => Err(unexpected(Op::RecordProvisioning)),
        });
        r.map_err(CallError::refused)
    }
}

impl<T: PortTransport> LedgerPort for RemoteLedger<T> {
    fn node_id(&self) -> NodeId {
        self.node_id
    }
    fn borrower_trusted(&self, node: &NodeId) -> bool {
        self.ask(PortRequest::BorrowerTrusted(*node)).unwrap_or(false)
    }
    fn node_revoked(&self, node: &NodeId) -> bool {
        self.ask(PortRequest::NodeRevoked(*node)).unwrap_or(false)
    }
    fn own_grant_revoked(&self, sequence: u64) -> bool {
        self.ask(PortRequest::OwnGrantRevoked(sequence)).unwrap_or(false)
    }
    fn issue_lease_grant(
        &mut self,
        borrower: NodeId,
        lease: u64,
        expires_unix_s: u64,
        now_unix_s: u64,
    ) -> Result<Grant, Refused> {
        let req = PortRequest::IssueLeaseGrant { borrower, lease, expires_unix_s, now_unix_s };
        let r = call_with(&self.transport, &req, |r| match r {
            PortReply::Grant { sequence, token } => {
                let token = Token::from_slice(token).map_err(|_| PortError::TokenTooLong(token.len()))?;
                Ok(Grant { token, sequence })
            }
            _ => Err(unexpected(Op::IssueLeaseGrant)),
        });
        r.map_err(CallError::refused)
    }
}
