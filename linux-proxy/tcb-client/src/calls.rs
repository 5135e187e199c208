//! Typed calls: each builds one request and knows how to read its answer, so that the async
//! [`crate::TcbClient`] and the [`crate::blocking::Client`] share them. Both clients have a method
//! of the same name for each, and `run` takes a [`TypedCall`] directly.
//!
//! Arguments that cannot fit in a frame (a token over [`TOKEN_MAX`] bytes, more than
//! [`RECORDS_PER_FRAME`] records, a record over [`RECORD_MAX`] bytes, more than [`HEADS_MAX`]
//! heads) are refused here, before anything is sent, with [`ClientError::TooLarge`].

use crate::ClientError;
use ppn_wire::message::{
    AttestRequest, AttestResponse as A, LedgerRequest, LedgerResponse as L, LenderRequest, LenderResponse as Ln,
    NodeRequest, NodeResponse as N, PairRequest, PairResponse as P,
};
use ppn_wire::service::*;
use ppn_wire::{ByteArray, Request, Response};

/// One request and how to read its answer as a `T`.
///
/// The request is boxed: a `Request` is a fixed 12 KiB (its largest body inline), and the
/// futures of the async client would otherwise carry it in their state.
#[derive(Debug, Clone)]
pub struct TypedCall<T> {
    request: Box<Request>,
    unpack: fn(Response) -> Option<T>,
}

impl<T> TypedCall<T> {
    pub fn request(&self) -> &Request {
        &self.request
    }

    /// Reads `response`, which the client has already checked is no error frame and is of the
    /// request's kind.
    pub fn finish(&self, response: Response) -> Result<T, ClientError> {
        let got = response.kind();
        (self.unpack)(response).ok_or(ClientError::UnexpectedResponse { expected: self.request.kind(), got })
    }
}

fn node<T>(request: NodeRequest, unpack: fn(Response) -> Option<T>) -> TypedCall<T> {
    TypedCall { request: Box::new(Request::Node(request)), unpack }
}

fn ledger<T>(request: LedgerRequest, unpack: fn(Response) -> Option<T>) -> TypedCall<T> {
    TypedCall { request: Box::new(Request::Ledger(request)), unpack }
}

fn lender<T>(request: LenderRequest, unpack: fn(Response) -> Option<T>) -> TypedCall<T> {
    TypedCall { request: Box::new(Request::Lender(request)), unpack }
}

fn pair<T>(request: PairRequest, unpack: fn(Response) -> Option<T>) -> TypedCall<T> {
    TypedCall { request: Box::new(Request::Pair(request)), unpack }
}

fn attest<T>(request: AttestRequest, unpack: fn(Response) -> Option<T>) -> TypedCall<T> {
    TypedCall { request: Box::new(Request::Attest(request)), unpack }
}

fn too_large(what: &'static str, len: usize, max: usize) -> ClientError {
    ClientError::TooLarge { what, len, max }
}

pub fn identity() -> TypedCall<NodeIdentity> {
    node(NodeRequest::Identity, |r| if let Response::Node(N::Identity(x)) = r { Some(x) } else { None })
}

pub fn public_keys() -> TypedCall<NodePublicKeys> {
    node(NodeRequest::PublicKeys, |r| if let Response::Node(N::PublicKeys(x)) = r { Some(x) } else { None })
}

pub fn status() -> TypedCall<NodeStatus> {
    node(NodeRequest::Status, |r| if let Response::Node(N::Status(x)) = r { Some(x) } else { None })
}

/// Issue a capability token to `grantee` for one resource, valid until `expires_unix_s` by the
/// TCB's clock. The answer carries the token and its sequence number.
pub fn issue_grant(
    grantee: NodeId,
    resource_type: ResourceType,
    resource_id: u64,
    expires_unix_s: u64,
) -> TypedCall<Grant> {
    let g = IssueGrant { grantee, resource_type, resource_id, expires_unix_s };
    ledger(LedgerRequest::IssueGrant(g), |r| if let Response::Ledger(L::IssueGrant(x)) = r { Some(x) } else { None })
}

/// Verify a token; only the issuing TCB can.
pub fn verify_token(token: &[u8]) -> Result<TypedCall<Verdict>, ClientError> {
    let token = Token::from_slice(token).map_err(|_| too_large("token bytes", token.len(), TOKEN_MAX))?;
    Ok(ledger(LedgerRequest::VerifyToken(VerifyToken { token }), |r| {
        if let Response::Ledger(L::VerifyToken(x)) = r { Some(x.verdict) } else { None }
    }))
}

/// Revoke a node, a grant or a range of grants. The answer is the id of the signed record the TCB
/// appended.
pub fn revoke(target: RevokeTarget) -> TypedCall<Digest> {
    ledger(LedgerRequest::Revoke(Revoke { target }), |r| {
        if let Response::Ledger(L::Revoke(x)) = r { Some(x.record_id) } else { None }
    })
}

/// Hand the TCB signed records relayed from peers (at most [`RECORDS_PER_FRAME`]). The answer has
/// one outcome per record, in order.
pub fn ingest_records<R: AsRef<[u8]>>(records: &[R]) -> Result<TypedCall<Vec<IngestOutcome>>, ClientError> {
    let mut body = IngestRecords { records: heapless::Vec::new() };
    if records.len() > RECORDS_PER_FRAME {
        return Err(too_large("records", records.len(), RECORDS_PER_FRAME));
    }
    for r in records {
        let r = r.as_ref();
        let record = Record::from_slice(r).map_err(|_| too_large("record bytes", r.len(), RECORD_MAX))?;
        // Cannot fail: the count was checked above.
        let _ = body.records.push(record);
    }
    Ok(ledger(LedgerRequest::IngestRecords(body), |r| {
        if let Response::Ledger(L::IngestRecords(x)) = r { Some(x.outcomes.to_vec()) } else { None }
    }))
}

/// The ledger's current heads and record count.
pub fn heads() -> TypedCall<Heads> {
    ledger(LedgerRequest::Heads, |r| if let Response::Ledger(L::Heads(x)) = r { Some(x) } else { None })
}

/// Records that a ledger whose heads are `peer_heads` lacks, parents first, at most `limit` (the
/// TCB caps it at [`RECORDS_PER_FRAME`]). `more` says to ask again with the new heads.
pub fn records_lacking(peer_heads: &[Digest], limit: u16) -> Result<TypedCall<Records>, ClientError> {
    let peer_heads =
        heapless::Vec::from_slice(peer_heads).map_err(|_| too_large("heads", peer_heads.len(), HAVE_MAX))?;
    Ok(ledger(LedgerRequest::RecordsLacking(RecordsLacking { peer_heads, limit }), |r| {
        if let Response::Ledger(L::RecordsLacking(x)) = r { Some(x) } else { None }
    }))
}

/// Counts, revoked nodes and the next grant sequence number, for operators.
pub fn ledger_summary() -> TypedCall<LedgerSummary> {
    ledger(LedgerRequest::Summary, |r| if let Response::Ledger(L::Summary(x)) = r { Some(x) } else { None })
}

/// The fleet root set: the Ed25519 public keys whose records the ledger accepts without an
/// admission record.
pub fn ledger_roots() -> TypedCall<Vec<PublicKey>> {
    ledger(LedgerRequest::Roots, |r| if let Response::Ledger(L::Roots(x)) = r { Some(x.keys.to_vec()) } else { None })
}

/// Starts a pairing session in the TCB (`code` as the operator typed it).
pub fn pair_begin(role: PairRole, code: &str, wireguard_key: [u8; 32]) -> Result<TypedCall<PairProgress>, ClientError> {
    let code = code.try_into().map_err(|_| too_large("pairing code characters", code.len(), PAIR_CODE_MAX))?;
    let b = PairBegin { role, code, wireguard_key: ppn_wire::ByteArray(wireguard_key) };
    Ok(pair(PairRequest::Begin(b), |r| if let Response::Pair(P::Begin(x)) = r { Some(x) } else { None }))
}

/// Hands the TCB's pairing session the peer's message.
pub fn pair_step(message: &[u8]) -> Result<TypedCall<PairProgress>, ClientError> {
    let message =
        message.try_into().map_err(|_| too_large("pairing message bytes", message.len(), PAIR_MESSAGE_MAX))?;
    Ok(pair(
        PairRequest::Step(PairStep { message }),
        |r| if let Response::Pair(P::Step(x)) = r { Some(x) } else { None },
    ))
}

/// The operator's verdict on the paired peer, with the peer's own admission record of this
/// node when the peer decided first (empty otherwise).
pub fn pair_decide(
    peer: NodeId,
    sas: u32,
    admit: bool,
    peer_record: &[u8],
) -> Result<TypedCall<PairDecided>, ClientError> {
    let peer_record = peer_record.try_into().map_err(|_| too_large("record bytes", peer_record.len(), RECORD_MAX))?;
    Ok(pair(PairRequest::Decide(PairDecide { peer, sas, admit, peer_record }), |r| {
        if let Response::Pair(P::Decide(x)) = r { Some(x) } else { None }
    }))
}

/// The issuing TCB's Ed25519 endorsement of a token it issued, for members without its grant key.
pub fn endorse(token: &[u8]) -> Result<TypedCall<Signature>, ClientError> {
    let token = Token::from_slice(token).map_err(|_| too_large("token bytes", token.len(), TOKEN_MAX))?;
    Ok(ledger(LedgerRequest::Endorse(Endorse { token }), |r| {
        if let Response::Ledger(L::Endorse(x)) = r { Some(x.signature) } else { None }
    }))
}

/// Checks a token another member issued, by its endorsement.
pub fn verify_endorsed(token: &[u8], signature: &Signature) -> Result<TypedCall<Verdict>, ClientError> {
    let token = Token::from_slice(token).map_err(|_| too_large("token bytes", token.len(), TOKEN_MAX))?;
    Ok(ledger(LedgerRequest::VerifyEndorsed(VerifyEndorsed { token, signature: *signature }), |r| {
        if let Response::Ledger(L::VerifyEndorsed(x)) = r { Some(x.verdict) } else { None }
    }))
}

/// The lendable memory pool: blocks free, reserved, lent, and neither (local VMs, scrubbing).
pub fn pool_status() -> TypedCall<Pool> {
    lender(LenderRequest::PoolStatus, |r| if let Response::Lender(Ln::PoolStatus(x)) = r { Some(x) } else { None })
}

/// Reserves `blocks` of the pool for `borrower` until `expires_unix_s`.
pub fn reserve(borrower: NodeId, blocks: u32, expires_unix_s: u64) -> TypedCall<Reservation> {
    lender(LenderRequest::Reserve(Reserve { borrower, blocks, expires_unix_s }), |r| {
        if let Response::Lender(Ln::Reserve(x)) = r { Some(x) } else { None }
    })
}

/// Turns a reservation into a lease and its capability token (resource type Memory, resource
/// id = lease id) for the borrower.
pub fn commit_lease(reservation_id: u64) -> TypedCall<Lease> {
    lender(LenderRequest::CommitLease(CommitLease { reservation_id }), |r| {
        if let Response::Lender(Ln::CommitLease(x)) = r { Some(x) } else { None }
    })
}

/// Ends a lease: its blocks are scrubbed before they are free again.
pub fn release(lease_id: u64) -> TypedCall<Released> {
    lender(LenderRequest::Release(Release { lease_id }), |r| {
        if let Response::Lender(Ln::Release(x)) = r { Some(x) } else { None }
    })
}

/// A provisioning statement for a sealed image, signed by the TCB's attestation key
/// (docs/attestation.md).
pub fn sign_root_hash(
    image: &str,
    root_hash: [u8; 32],
    salt: [u8; 32],
    data_blocks: u64,
    hash_offset: u64,
) -> Result<TypedCall<Vec<u8>>, ClientError> {
    let image = image.try_into().map_err(|_| too_large("image name bytes", image.len(), ATTEST_NAME_MAX))?;
    let body = SignRootHash { image, root_hash: ByteArray(root_hash), salt: ByteArray(salt), data_blocks, hash_offset };
    Ok(attest(AttestRequest::SignRootHash(body), |r| {
        if let Response::Attest(A::SignRootHash(x)) = r { Some(x.statement.to_vec()) } else { None }
    }))
}

/// An attestation report (an EAT in COSE_Sign1) for VM `vm`, which booted the image whose
/// root hash is `root_hash` and whose provisioning statement is `provisioning`.
pub fn sign_report(
    vm: &str,
    root_hash: [u8; 32],
    provisioning: &[u8],
    nonce: &[u8],
) -> Result<TypedCall<Vec<u8>>, ClientError> {
    let body = SignReport {
        vm: vm.try_into().map_err(|_| too_large("VM name bytes", vm.len(), ATTEST_NAME_MAX))?,
        root_hash: ByteArray(root_hash),
        provisioning: heapless::Vec::from_slice(provisioning)
            .map_err(|_| too_large("provisioning statement bytes", provisioning.len(), PROVISIONING_MAX))?,
        nonce: heapless::Vec::from_slice(nonce).map_err(|_| too_large("nonce bytes", nonce.len(), NONCE_MAX))?,
    };
    Ok(attest(AttestRequest::SignReport(body), |r| {
        if let Response::Attest(A::SignReport(x)) = r { Some(x.cose_sign1.to_vec()) } else { None }
    }))
}

pub fn ledger_members() -> TypedCall<Vec<Member>> {
    ledger(LedgerRequest::Members, |r| {
        if let Response::Ledger(L::Members(x)) = r { Some(x.members.to_vec()) } else { None }
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppn_wire::{ByteArray, ErrorCode, Kind};

    #[test]
    fn arguments_that_cannot_fit_a_frame_are_refused_before_sending() {
        let too_long = [0u8; TOKEN_MAX + 1];
        assert!(matches!(
            verify_token(&too_long),
            Err(ClientError::TooLarge { what: "token bytes", len: 65, max: 64 })
        ));
        assert!(verify_token(&[0u8; TOKEN_MAX]).is_ok());
        let many = vec![vec![1u8; 10]; RECORDS_PER_FRAME + 1];
        assert!(matches!(ingest_records(&many), Err(ClientError::TooLarge { what: "records", .. })));
        let big = [vec![0u8; RECORD_MAX + 1]];
        assert!(matches!(ingest_records(&big), Err(ClientError::TooLarge { what: "record bytes", len: 1025, .. })));
        let heads = vec![ByteArray([0; 32]); HAVE_MAX + 1];
        assert!(matches!(records_lacking(&heads, 1), Err(ClientError::TooLarge { what: "heads", .. })));
    }

    #[test]
    fn calls_build_their_request_and_read_only_their_answer() {
        let call = verify_token(&[7; 60]).unwrap();
        match call.request() {
            Request::Ledger(LedgerRequest::VerifyToken(v)) => assert_eq!(&v.token[..], &[7; 60]),
            r => panic!("{r:?}"),
        }
        let answer = Response::Ledger(L::VerifyToken(TokenVerdict { verdict: Verdict::GrantRevoked }));
        assert_eq!(call.finish(answer).unwrap(), Verdict::GrantRevoked);
        match call.finish(Response::error(ErrorCode::Internal, "x")) {
            Err(ClientError::UnexpectedResponse { expected: Kind::LedgerVerifyToken, got: Kind::Error }) => {}
            other => panic!("{other:?}"),
        }
        let ingest = ingest_records(&[b"one".as_slice(), b"two"]).unwrap();
        match ingest.request() {
            Request::Ledger(LedgerRequest::IngestRecords(i)) => {
                assert_eq!(i.records.iter().map(|r| &r[..]).collect::<Vec<_>>(), [b"one".as_slice(), b"two"])
            }
            r => panic!("{r:?}"),
        }
        let outcomes = heapless::Vec::from_slice(&[IngestOutcome::Duplicate, IngestOutcome::Malformed]).unwrap();
        let answer = Response::Ledger(L::IngestRecords(Ingested { outcomes }));
        assert_eq!(ingest.finish(answer).unwrap(), [IngestOutcome::Duplicate, IngestOutcome::Malformed]);
    }
}
