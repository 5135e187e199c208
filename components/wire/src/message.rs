//! Typed requests and responses, and their encoding into frames.

// Messages hold their bodies inline (no allocator in the TCB): an ingest request is ~12 KiB while
// most are a few bytes. That is the design, sized against MAX_FRAME_LEN, not an accident.
#![allow(clippy::large_enum_variant)]

use crate::frame::{Frame, HEADER_LEN, Header};
use crate::service::*;
use crate::{Error, Kind, Service};
use serde::Serialize;
use serde::de::DeserializeOwned;

/// Node service requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeRequest {
    Identity,
    PublicKeys,
    Status,
}

/// Ledger service requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerRequest {
    IssueGrant(IssueGrant),
    VerifyToken(VerifyToken),
    Revoke(Revoke),
    IngestRecords(IngestRecords),
    Heads,
    RecordsLacking(RecordsLacking),
    Summary,
    Roots,
    Members,
    Endorse(Endorse),
    VerifyEndorsed(VerifyEndorsed),
}

/// Lender service requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LenderRequest {
    PoolStatus,
    Reserve(Reserve),
    CommitLease(CommitLease),
    Release(Release),
}

/// Attest service requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestRequest {
    SignRootHash(SignRootHash),
    SignReport(SignReport),
}

/// Pair service requests.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairRequest {
    Begin(PairBegin),
    Step(PairStep),
    Decide(PairDecide),
}

/// A request, by owning service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Request {
    Node(NodeRequest),
    Ledger(LedgerRequest),
    Lender(LenderRequest),
    Attest(AttestRequest),
    Pair(PairRequest),
}

/// Node service responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum NodeResponse {
    Identity(NodeIdentity),
    PublicKeys(NodePublicKeys),
    Status(NodeStatus),
}

/// Ledger service responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LedgerResponse {
    IssueGrant(Grant),
    VerifyToken(TokenVerdict),
    Revoke(Revoked),
    IngestRecords(Ingested),
    Heads(Heads),
    RecordsLacking(Records),
    Summary(LedgerSummary),
    Roots(RootSet),
    Members(Members),
    Endorse(Endorsement),
    VerifyEndorsed(TokenVerdict),
}

/// Lender service responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum LenderResponse {
    PoolStatus(Pool),
    Reserve(Reservation),
    CommitLease(Lease),
    Release(Released),
}

/// Attest service responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum AttestResponse {
    SignRootHash(ProvisioningStatement),
    SignReport(Report),
}

/// Pair service responses.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum PairResponse {
    Begin(PairProgress),
    Step(PairProgress),
    Decide(PairDecided),
}

/// A response: an error, or the answer of the request's service.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Response {
    Error(ErrorBody),
    Node(NodeResponse),
    Ledger(LedgerResponse),
    Lender(LenderResponse),
    Attest(AttestResponse),
    Pair(PairResponse),
}

impl Request {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Node(NodeRequest::Identity) => Kind::NodeIdentity,
            Self::Node(NodeRequest::PublicKeys) => Kind::NodePublicKeys,
            Self::Node(NodeRequest::Status) => Kind::NodeStatus,
            Self::Ledger(LedgerRequest::IssueGrant(_)) => Kind::LedgerIssueGrant,
            Self::Ledger(LedgerRequest::VerifyToken(_)) => Kind::LedgerVerifyToken,
            Self::Ledger(LedgerRequest::Revoke(_)) => Kind::LedgerRevoke,
            Self::Ledger(LedgerRequest::IngestRecords(_)) => Kind::LedgerIngestRecords,
            Self::Ledger(LedgerRequest::Heads) => Kind::LedgerHeads,
            Self::Ledger(LedgerRequest::RecordsLacking(_)) => Kind::LedgerRecordsLacking,
            Self::Ledger(LedgerRequest::Summary) => Kind::LedgerSummary,
            Self::Ledger(LedgerRequest::Roots) => Kind::LedgerRoots,
            Self::Ledger(LedgerRequest::Members) => Kind::LedgerMembers,
            Self::Ledger(LedgerRequest::Endorse(_)) => Kind::LedgerEndorse,
            Self::Ledger(LedgerRequest::VerifyEndorsed(_)) => Kind::LedgerVerifyEndorsed,
            Self::Lender(LenderRequest::PoolStatus) => Kind::LenderPoolStatus,
            Self::Lender(LenderRequest::Reserve(_)) => Kind::LenderReserve,
            Self::Lender(LenderRequest::CommitLease(_)) => Kind::LenderCommitLease,
            Self::Lender(LenderRequest::Release(_)) => Kind::LenderRelease,
            Self::Attest(AttestRequest::SignRootHash(_)) => Kind::AttestSignRootHash,
            Self::Attest(AttestRequest::SignReport(_)) => Kind::AttestSignReport,
            Self::Pair(PairRequest::Begin(_)) => Kind::PairBegin,
            Self::Pair(PairRequest::Step(_)) => Kind::PairStep,
            Self::Pair(PairRequest::Decide(_)) => Kind::PairDecide,
        }
    }

    pub fn service(&self) -> Service {
        self.kind().service()
    }

    fn put_body(&self, out: &mut [u8]) -> Result<usize, Error> {
        match self {
            Self::Node(NodeRequest::Identity | NodeRequest::PublicKeys | NodeRequest::Status)
            | Self::Ledger(
                LedgerRequest::Heads | LedgerRequest::Summary | LedgerRequest::Roots | LedgerRequest::Members,
            )
            | Self::Lender(LenderRequest::PoolStatus) => Ok(0),
            Self::Ledger(LedgerRequest::IssueGrant(b)) => put(b, out),
            Self::Ledger(LedgerRequest::VerifyToken(b)) => put(b, out),
            Self::Ledger(LedgerRequest::Revoke(b)) => put(b, out),
            Self::Ledger(LedgerRequest::IngestRecords(b)) => put(b, out),
            Self::Ledger(LedgerRequest::RecordsLacking(b)) => put(b, out),
            Self::Ledger(LedgerRequest::Endorse(b)) => put(b, out),
            Self::Ledger(LedgerRequest::VerifyEndorsed(b)) => put(b, out),
            Self::Lender(LenderRequest::Reserve(b)) => put(b, out),
            Self::Lender(LenderRequest::CommitLease(b)) => put(b, out),
            Self::Lender(LenderRequest::Release(b)) => put(b, out),
            Self::Attest(AttestRequest::SignRootHash(b)) => put(b, out),
            Self::Attest(AttestRequest::SignReport(b)) => put(b, out),
            Self::Pair(PairRequest::Begin(b)) => put(b, out),
            Self::Pair(PairRequest::Step(b)) => put(b, out),
            Self::Pair(PairRequest::Decide(b)) => put(b, out),
        }
    }

    fn take_body(kind: Kind, body: &[u8]) -> Result<Self, Error> {
        use {AttestRequest as A, LedgerRequest as Le, LenderRequest as Ln, NodeRequest as N, PairRequest as P};
        Ok(match kind {
            Kind::NodeIdentity => empty(kind, body).map(|()| Self::Node(N::Identity))?,
            Kind::NodePublicKeys => empty(kind, body).map(|()| Self::Node(N::PublicKeys))?,
            Kind::NodeStatus => empty(kind, body).map(|()| Self::Node(N::Status))?,
            Kind::LedgerIssueGrant => Self::Ledger(Le::IssueGrant(take(kind, body)?)),
            Kind::LedgerVerifyToken => Self::Ledger(Le::VerifyToken(take(kind, body)?)),
            Kind::LedgerRevoke => Self::Ledger(Le::Revoke(take(kind, body)?)),
            Kind::LedgerIngestRecords => Self::Ledger(Le::IngestRecords(take(kind, body)?)),
            Kind::LedgerHeads => empty(kind, body).map(|()| Self::Ledger(Le::Heads))?,
            Kind::LedgerRecordsLacking => Self::Ledger(Le::RecordsLacking(take(kind, body)?)),
            Kind::LedgerSummary => empty(kind, body).map(|()| Self::Ledger(Le::Summary))?,
            Kind::LedgerRoots => empty(kind, body).map(|()| Self::Ledger(Le::Roots))?,
            Kind::LedgerMembers => empty(kind, body).map(|()| Self::Ledger(Le::Members))?,
            Kind::LedgerEndorse => Self::Ledger(Le::Endorse(take(kind, body)?)),
            Kind::LedgerVerifyEndorsed => Self::Ledger(Le::VerifyEndorsed(take(kind, body)?)),
            Kind::LenderPoolStatus => empty(kind, body).map(|()| Self::Lender(Ln::PoolStatus))?,
            Kind::LenderReserve => Self::Lender(Ln::Reserve(take(kind, body)?)),
            Kind::LenderCommitLease => Self::Lender(Ln::CommitLease(take(kind, body)?)),
            Kind::LenderRelease => Self::Lender(Ln::Release(take(kind, body)?)),
            Kind::AttestSignRootHash => Self::Attest(A::SignRootHash(take(kind, body)?)),
            Kind::AttestSignReport => Self::Attest(A::SignReport(take(kind, body)?)),
            Kind::PairBegin => Self::Pair(P::Begin(take(kind, body)?)),
            Kind::PairStep => Self::Pair(P::Step(take(kind, body)?)),
            Kind::PairDecide => Self::Pair(P::Decide(take(kind, body)?)),
            Kind::Error => return Err(Error::WrongDirection { kind: kind.to_u16(), got: "request" }),
            Kind::Unknown(n) => return Err(Error::UnknownKind(n)),
        })
    }
}

impl Response {
    pub fn kind(&self) -> Kind {
        match self {
            Self::Error(_) => Kind::Error,
            Self::Node(NodeResponse::Identity(_)) => Kind::NodeIdentity,
            Self::Node(NodeResponse::PublicKeys(_)) => Kind::NodePublicKeys,
            Self::Node(NodeResponse::Status(_)) => Kind::NodeStatus,
            Self::Ledger(LedgerResponse::IssueGrant(_)) => Kind::LedgerIssueGrant,
            Self::Ledger(LedgerResponse::VerifyToken(_)) => Kind::LedgerVerifyToken,
            Self::Ledger(LedgerResponse::Revoke(_)) => Kind::LedgerRevoke,
            Self::Ledger(LedgerResponse::IngestRecords(_)) => Kind::LedgerIngestRecords,
            Self::Ledger(LedgerResponse::Heads(_)) => Kind::LedgerHeads,
            Self::Ledger(LedgerResponse::RecordsLacking(_)) => Kind::LedgerRecordsLacking,
            Self::Ledger(LedgerResponse::Summary(_)) => Kind::LedgerSummary,
            Self::Ledger(LedgerResponse::Roots(_)) => Kind::LedgerRoots,
            Self::Ledger(LedgerResponse::Members(_)) => Kind::LedgerMembers,
            Self::Ledger(LedgerResponse::Endorse(_)) => Kind::LedgerEndorse,
            Self::Ledger(LedgerResponse::VerifyEndorsed(_)) => Kind::LedgerVerifyEndorsed,
            Self::Lender(LenderResponse::PoolStatus(_)) => Kind::LenderPoolStatus,
            Self::Lender(LenderResponse::Reserve(_)) => Kind::LenderReserve,
            Self::Lender(LenderResponse::CommitLease(_)) => Kind::LenderCommitLease,
            Self::Lender(LenderResponse::Release(_)) => Kind::LenderRelease,
            Self::Attest(AttestResponse::SignRootHash(_)) => Kind::AttestSignRootHash,
            Self::Attest(AttestResponse::SignReport(_)) => Kind::AttestSignReport,
            Self::Pair(PairResponse::Begin(_)) => Kind::PairBegin,
            Self::Pair(PairResponse::Step(_)) => Kind::PairStep,
            Self::Pair(PairResponse::Decide(_)) => Kind::PairDecide,
        }
    }

    /// An error response.
    pub fn error(code: crate::ErrorCode, detail: &str) -> Self {
        Self::Error(ErrorBody::new(code, detail))
    }

    fn put_body(&self, out: &mut [u8]) -> Result<usize, Error> {
        match self {
            Self::Error(b) => put(b, out),
            Self::Node(NodeResponse::Identity(b)) => put(b, out),
            Self::Node(NodeResponse::PublicKeys(b)) => put(b, out),
            Self::Node(NodeResponse::Status(b)) => put(b, out),
            Self::Ledger(LedgerResponse::IssueGrant(b)) => put(b, out),
            Self::Ledger(LedgerResponse::VerifyToken(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Revoke(b)) => put(b, out),
            Self::Ledger(LedgerResponse::IngestRecords(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Heads(b)) => put(b, out),
            Self::Ledger(LedgerResponse::RecordsLacking(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Summary(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Roots(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Members(b)) => put(b, out),
            Self::Ledger(LedgerResponse::Endorse(b)) => put(b, out),
            Self::Ledger(LedgerResponse::VerifyEndorsed(b)) => put(b, out),
            Self::Lender(LenderResponse::PoolStatus(b)) => put(b, out),
            Self::Lender(LenderResponse::Reserve(b)) => put(b, out),
            Self::Lender(LenderResponse::CommitLease(b)) => put(b, out),
            Self::Lender(LenderResponse::Release(b)) => put(b, out),
            Self::Attest(AttestResponse::SignRootHash(b)) => put(b, out),
            Self::Attest(AttestResponse::SignReport(b)) => put(b, out),
            Self::Pair(PairResponse::Begin(b)) => put(b, out),
            Self::Pair(PairResponse::Step(b)) => put(b, out),
            Self::Pair(PairResponse::Decide(b)) => put(b, out),
        }
    }

    fn take_body(kind: Kind, body: &[u8]) -> Result<Self, Error> {
        use {AttestResponse as A, LedgerResponse as Le, LenderResponse as Ln, NodeResponse as N, PairResponse as P};
        Ok(match kind {
            Kind::Error => Self::Error(take(kind, body)?),
            Kind::NodeIdentity => Self::Node(N::Identity(take(kind, body)?)),
            Kind::NodePublicKeys => Self::Node(N::PublicKeys(take(kind, body)?)),
            Kind::NodeStatus => Self::Node(N::Status(take(kind, body)?)),
            Kind::LedgerIssueGrant => Self::Ledger(Le::IssueGrant(take(kind, body)?)),
            Kind::LedgerVerifyToken => Self::Ledger(Le::VerifyToken(take(kind, body)?)),
            Kind::LedgerRevoke => Self::Ledger(Le::Revoke(take(kind, body)?)),
            Kind::LedgerIngestRecords => Self::Ledger(Le::IngestRecords(take(kind, body)?)),
            Kind::LedgerHeads => Self::Ledger(Le::Heads(take(kind, body)?)),
            Kind::LedgerRecordsLacking => Self::Ledger(Le::RecordsLacking(take(kind, body)?)),
            Kind::LedgerSummary => Self::Ledger(Le::Summary(take(kind, body)?)),
            Kind::LedgerRoots => Self::Ledger(Le::Roots(take(kind, body)?)),
            Kind::LedgerMembers => Self::Ledger(Le::Members(take(kind, body)?)),
            Kind::LedgerEndorse => Self::Ledger(Le::Endorse(take(kind, body)?)),
            Kind::LedgerVerifyEndorsed => Self::Ledger(Le::VerifyEndorsed(take(kind, body)?)),
            Kind::LenderPoolStatus => Self::Lender(Ln::PoolStatus(take(kind, body)?)),
            Kind::LenderReserve => Self::Lender(Ln::Reserve(take(kind, body)?)),
            Kind::LenderCommitLease => Self::Lender(Ln::CommitLease(take(kind, body)?)),
            Kind::LenderRelease => Self::Lender(Ln::Release(take(kind, body)?)),
            Kind::AttestSignRootHash => Self::Attest(A::SignRootHash(take(kind, body)?)),
            Kind::AttestSignReport => Self::Attest(A::SignReport(take(kind, body)?)),
            Kind::PairBegin => Self::Pair(P::Begin(take(kind, body)?)),
            Kind::PairStep => Self::Pair(P::Step(take(kind, body)?)),
            Kind::PairDecide => Self::Pair(P::Decide(take(kind, body)?)),
            Kind::Unknown(n) => return Err(Error::UnknownKind(n)),
        })
    }
}

fn put<T: Serialize>(value: &T, out: &mut [u8]) -> Result<usize, Error> {
    postcard::to_slice(value, out).map(|s| s.len()).map_err(|_| Error::BufferTooSmall)
}

fn take<T: DeserializeOwned>(kind: Kind, body: &[u8]) -> Result<T, Error> {
    let (value, rest) = postcard::take_from_bytes(body).map_err(|_| Error::MalformedBody(kind.to_u16()))?;
    if !rest.is_empty() {
        return Err(Error::TrailingBodyBytes { kind: kind.to_u16(), extra: rest.len() });
    }
    Ok(value)
}

fn empty(kind: Kind, body: &[u8]) -> Result<(), Error> {
    if body.is_empty() { Ok(()) } else { Err(Error::TrailingBodyBytes { kind: kind.to_u16(), extra: body.len() }) }
}

fn encode(
    response: bool,
    kind: Kind,
    request_id: u32,
    out: &mut [u8],
    body: impl FnOnce(&mut [u8]) -> Result<usize, Error>,
) -> Result<usize, Error> {
    let limit = out.len().min(crate::MAX_FRAME_LEN);
    let body_out = out.get_mut(HEADER_LEN..limit).ok_or(Error::BufferTooSmall)?;
    let body_len = body(body_out)?;
    Header { response, kind, request_id, body_len: body_len as u32 }.emit(out)?;
    Ok(HEADER_LEN + body_len)
}

/// Encodes a request frame into `out`; returns the frame's length.
pub fn encode_request(request_id: u32, request: &Request, out: &mut [u8]) -> Result<usize, Error> {
    encode(false, request.kind(), request_id, out, |b| request.put_body(b))
}

/// Encodes a response frame into `out`; returns the frame's length.
pub fn encode_response(request_id: u32, response: &Response, out: &mut [u8]) -> Result<usize, Error> {
    encode(true, response.kind(), request_id, out, |b| response.put_body(b))
}

/// Decodes a whole request frame: header checks, direction, kind, body.
pub fn decode_request(bytes: &[u8]) -> Result<(u32, Request), Error> {
    let frame = Frame::new_checked(bytes)?;
    if frame.is_response() {
        return Err(Error::WrongDirection { kind: frame.kind().to_u16(), got: "response" });
    }
    Ok((frame.request_id(), Request::take_body(frame.kind(), frame.body())?))
}

/// Decodes a whole response frame: header checks, direction, kind, body.
pub fn decode_response(bytes: &[u8]) -> Result<(u32, Response), Error> {
    let frame = Frame::new_checked(bytes)?;
    if !frame.is_response() {
        return Err(Error::WrongDirection { kind: frame.kind().to_u16(), got: "request" });
    }
    Ok((frame.request_id(), Response::take_body(frame.kind(), frame.body())?))
}
