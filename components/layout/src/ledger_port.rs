//! The ledger port: what the `lender` and `attest` PDs ask the `ledger` PD, by protected
//! procedure call over a one-page buffer each (`lender_ledger_buffer`, `attest_ledger_buffer`;
//! docs/sel4-image.md, "The ledger port"). Which caller may ask what is [`Caller::allows`]: the
//! ledger answers an op on the other caller's channel with a refusal.
//!
//! The lender holds no keys and no ledger state. For every lease it commits, it asks the ledger
//! to issue the lease's token; before lending it asks whether the borrower is trusted and not
//! revoked; before every request it asks which of its leases' grants were revoked, and the time
//! (the ledger's clock is the TCB's one clock, so a lease and its token expire together).
//!
//! The attest PD asks once, at its start, for the node's attestation key ([`Op::AttestKey`]): the
//! ledger derives it from the identity seed at boot, hands the secret and its certificate over
//! in the one reply, and drops its own copy; a second request is refused. That reply is the only
//! message that carries a secret, which is why `attest_ledger_buffer` is mapped into the two
//! secret-holding PDs only (`Region::handoff`), and why the attest PD wipes the page once it has
//! copied the reply out. The attest PD also records each provisioning statement it signs in the
//! ledger ([`Op::RecordProvisioning`]) before it hands the statement out.
//!
//! Every message, both ways, starts with an 8-byte header, little-endian:
//!
//! | offset | size | field | |
//! | --- | --- | --- | --- |
//! | 0 | 4 | `magic` | [`MAGIC`], `PPNP` |
//! | 4 | 1 | `version` | [`VERSION`] (1) |
//! | 5 | 1 | `op` | [`Op`]; a reply echoes its request's op |
//! | 6 | 2 | `len` | `u16` LE: bytes of the body after the header |
//! | 8 | `len` | body | per op, below |
//!
//! Request bodies: `NodeId`, `Now` and `AttestKey` none; `BorrowerTrusted` and `NodeRevoked`
//! the node id (8 bytes); `OwnGrantRevoked` the grant's sequence (`u64`); `IssueLeaseGrant` the
//! borrower (8 bytes), the lease id, the expiry and the lender's `now` (three `u64`, Unix
//! seconds); `RecordProvisioning` the image's root hash and the statement's SHA-256 (32 bytes
//! each).
//!
//! A reply body starts with a status byte: 0 = answered, 1 = refused. An answer is, per op:
//! `NodeId` the node id (8 bytes); `Now` a `u64`; the three questions one byte, 0 (no) or 1
//! (yes); `IssueLeaseGrant` the grant's sequence (`u64`), the token's length (one byte, at most
//! `TOKEN_MAX`) and the token; `AttestKey` the attestation key's 32-byte secret, then its
//! [`ATTEST_CERT_LEN`]-byte certificate (`ppn_attest::KeyCert`, signed by the node key);
//! `RecordProvisioning` the id of the ledger record it authored (32 bytes). A refusal is the wire
//! error code (`u16`), the detail's length (one byte, at most [`MAX_DETAIL`]) and the detail
//! (UTF-8).
//!
//! Decoding checks the magic, the version, the op, that `len` fits what was read and is exactly
//! what the op's body needs; anything else is a [`PortError`] naming what was wrong. The PPC
//! labels are [`CALL_PORT`] (request in the buffer) and [`REPLY_PORT`] (reply in the buffer).

use core::fmt;
use ppn_wire::service::TOKEN_MAX;
use ppn_wire::{ByteArray, ErrorCode, NodeId};

/// The message magic.
pub const MAGIC: [u8; 4] = *b"PPNP";
/// The message version.
pub const VERSION: u8 = 1;
/// Bytes of the header.
pub const HEADER_LEN: usize = 8;
/// The longest refusal detail a reply carries (as the wire's error frames).
pub const MAX_DETAIL: usize = 128;
/// The largest message either way: a refusal with the longest detail, or a grant with the
/// longest token.
pub const MAX_MESSAGE: usize = 256;
/// The shared buffer's size: one page.
pub const BUFFER_SIZE: u64 = 0x1000;

/// Bytes of an attestation-key certificate (`ppn_attest::cert::CERT_LEN`; the TCB core checks
/// that they agree).
pub const ATTEST_CERT_LEN: usize = 141;

/// PPC label from `lender` or `attest`: "a ledger-port request is in the buffer".
pub const CALL_PORT: u64 = 2;
/// PPC reply label: "the reply is in the buffer".
pub const REPLY_PORT: u64 = 2;
/// PPC reply label: "not a port call on the port's channel; nothing was written".
pub const REPLY_NONE: u64 = 0;

const _: () = assert!(HEADER_LEN + 1 + 8 + 1 + TOKEN_MAX <= MAX_MESSAGE);
const _: () = assert!(HEADER_LEN + 1 + 2 + 1 + MAX_DETAIL <= MAX_MESSAGE);
const _: () = assert!(HEADER_LEN + 1 + 32 + ATTEST_CERT_LEN <= MAX_MESSAGE);
const _: () = assert!(MAX_MESSAGE as u64 <= BUFFER_SIZE);

/// What a request asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Op {
    /// This node's id.
    NodeId = 1,
    /// The ledger's clock, Unix seconds.
    Now = 2,
    /// Whether a node is a trusted member (a root, or validly admitted) and not revoked.
    BorrowerTrusted = 3,
    /// Whether the ledger has revoked a node.
    NodeRevoked = 4,
    /// Whether the ledger has revoked this node's grant of a sequence number.
    OwnGrantRevoked = 5,
    /// Issue a lease's token: resource type Memory, resource id = the lease id.
    IssueLeaseGrant = 6,
    /// Hand over the node's attestation key and its certificate (once; attest only).
    AttestKey = 7,
    /// Author an `ImageProvisioned` ledger record (attest only).
    RecordProvisioning = 8,
}

/// Who is calling: each caller has a channel (and a buffer) of its own on the ledger's side, so
/// the ledger knows which one asks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Caller {
    /// The `lender` PD.
    Lender,
    /// The `attest` PD.
    Attest,
}

impl Caller {
    /// Whether this caller may ask `op`. The lender gets the ledger's answers about trust and
    /// its lease tokens, never the attestation key; the attest PD gets its key, the node id and
    /// the time and the recording of its provisioning statements, nothing about leases or trust.
    pub const fn allows(self, op: Op) -> bool {
        match self {
            Caller::Lender => !matches!(op, Op::AttestKey | Op::RecordProvisioning),
            Caller::Attest => matches!(op, Op::NodeId | Op::Now | Op::AttestKey | Op::RecordProvisioning),
        }
    }

    pub const fn name(self) -> &'static str {
        match self {
            Caller::Lender => "lender",
            Caller::Attest => "attest",
        }
    }
}

impl Op {
    /// The op of a byte, if any.
    pub const fn from_u8(b: u8) -> Option<Op> {
        Some(match b {
            1 => Op::NodeId,
            2 => Op::Now,
            3 => Op::BorrowerTrusted,
            4 => Op::NodeRevoked,
            5 => Op::OwnGrantRevoked,
            6 => Op::IssueLeaseGrant,
            7 => Op::AttestKey,
            8 => Op::RecordProvisioning,
            _ => return None,
        })
    }
}

/// A request from the lender or the attest PD.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortRequest {
    NodeId,
    AttestKey,
    Now,
    BorrowerTrusted(NodeId),
    NodeRevoked(NodeId),
    OwnGrantRevoked(u64),
    IssueLeaseGrant { borrower: NodeId, lease: u64, expires_unix_s: u64, now_unix_s: u64 },
    RecordProvisioning { root_hash: [u8; 32], statement: [u8; 32] },
}

impl PortRequest {
    pub const fn op(&self) -> Op {
        match self {
            PortRequest::NodeId => Op::NodeId,
            PortRequest::Now => Op::Now,
            PortRequest::BorrowerTrusted(_) => Op::BorrowerTrusted,
            PortRequest::NodeRevoked(_) => Op::NodeRevoked,
            PortRequest::OwnGrantRevoked(_) => Op::OwnGrantRevoked,
            PortRequest::IssueLeaseGrant { .. } => Op::IssueLeaseGrant,
            PortRequest::AttestKey => Op::AttestKey,
            PortRequest::RecordProvisioning { .. } => Op::RecordProvisioning,
        }
    }
}

/// An answer from the ledger (borrowing the token or detail from the message).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortReply<'a> {
    NodeId(NodeId),
    Now(u64),
    /// The answer to `BorrowerTrusted`, `NodeRevoked` or `OwnGrantRevoked`.
    Answer(bool),
    Grant {
        sequence: u64,
        token: &'a [u8],
    },
    /// The id of the record `RecordProvisioning` authored.
    Record([u8; 32]),
    /// The attestation key's secret and its certificate.
    AttestKey {
        secret: &'a [u8; 32],
        cert: &'a [u8; ATTEST_CERT_LEN],
    },
    Refused {
        code: ErrorCode,
        detail: &'a str,
    },
}

/// Why a message could not be encoded or decoded.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum PortError {
    /// Fewer bytes than the header says, or than a header.
    Short {
        need: usize,
        have: usize,
    },
    BadMagic([u8; 4]),
    BadVersion(u8),
    UnknownOp(u8),
    /// The body's length is not what the op needs.
    BadLength {
        op: Op,
        len: usize,
    },
    /// A reply to another op than the one asked.
    WrongOp {
        asked: Op,
        answered: Op,
    },
    BadStatus(u8),
    BadBool(u8),
    TokenTooLong(usize),
    DetailTooLong(usize),
    DetailNotUtf8,
    /// The output buffer is smaller than the message.
    NoRoom {
        need: usize,
        have: usize,
    },
}

impl fmt::Display for PortError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            PortError::Short { need, have } => write!(f, "ledger port: message of {have} bytes, need {need}"),
            PortError::BadMagic(m) => write!(f, "ledger port: bad magic {m:02x?}"),
            PortError::BadVersion(v) => write!(f, "ledger port: version {v}, this build speaks {VERSION}"),
            PortError::UnknownOp(o) => write!(f, "ledger port: unknown op {o}"),
            PortError::BadLength { op, len } => write!(f, "ledger port: {op:?} with a body of {len} bytes"),
            PortError::WrongOp { asked, answered } => {
                write!(f, "ledger port: asked {asked:?}, the reply answers {answered:?}")
            }
            PortError::BadStatus(s) => write!(f, "ledger port: reply status {s}"),
            PortError::BadBool(b) => write!(f, "ledger port: answer byte {b}, want 0 or 1"),
            PortError::TokenTooLong(n) => write!(f, "ledger port: token of {n} bytes, at most {TOKEN_MAX}"),
            PortError::DetailTooLong(n) => write!(f, "ledger port: detail of {n} bytes, at most {MAX_DETAIL}"),
            PortError::DetailNotUtf8 => f.write_str("ledger port: detail is not UTF-8"),
            PortError::NoRoom { need, have } => write!(f, "ledger port: message needs {need} bytes, room for {have}"),
        }
    }
}

/// Writes bytes one after the other into a buffer, bounds checked.
struct Writer<'a> {
    out: &'a mut [u8],
    at: usize,
}

impl Writer<'_> {
    fn put(&mut self, bytes: &[u8]) -> Result<(), PortError> {
        let end = self.at + bytes.len();
        let have = self.out.len();
        let dst = self.out.get_mut(self.at..end).ok_or(PortError::NoRoom { need: end, have })?;
        dst.copy_from_slice(bytes);
        self.at = end;
        Ok(())
    }
}

fn header(w: &mut Writer<'_>, op: Op) -> Result<(), PortError> {
    w.put(&MAGIC)?;
    w.put(&[VERSION, op as u8, 0, 0])
}

/// Fills in the header's `len` and returns the message's length.
fn finish(w: Writer<'_>) -> usize {
    let len = (w.at - HEADER_LEN) as u16;
    w.out[6..8].copy_from_slice(&len.to_le_bytes());
    w.at
}

/// Encodes a request into `out`; returns its length.
pub fn encode_request(req: &PortRequest, out: &mut [u8]) -> Result<usize, PortError> {
    let mut w = Writer { out, at: 0 };
    header(&mut w, req.op())?;
    match req {
        PortRequest::NodeId | PortRequest::Now | PortRequest::AttestKey => {}
        PortRequest::BorrowerTrusted(n) | PortRequest::NodeRevoked(n) => w.put(&n.0.0)?,
        PortRequest::OwnGrantRevoked(s) => w.put(&s.to_le_bytes())?,
        PortRequest::IssueLeaseGrant { borrower, lease, expires_unix_s, now_unix_s } => {
            w.put(&borrower.0.0)?;
            w.put(&lease.to_le_bytes())?;
            w.put(&expires_unix_s.to_le_bytes())?;
            w.put(&now_unix_s.to_le_bytes())?;
        }
        PortRequest::RecordProvisioning { root_hash, statement } => {
            w.put(root_hash)?;
            w.put(statement)?;
        }
    }
    Ok(finish(w))
}

/// Encodes the reply to a request of `op` into `out`; returns its length. A refusal's detail is
/// cut to [`MAX_DETAIL`] bytes (at a character boundary).
pub fn encode_reply(op: Op, reply: &PortReply<'_>, out: &mut [u8]) -> Result<usize, PortError> {
    let mut w = Writer { out, at: 0 };
    header(&mut w, op)?;
    match reply {
        PortReply::Refused { code, detail } => {
            let mut n = detail.len().min(MAX_DETAIL);
            while !detail.is_char_boundary(n) {
                n -= 1;
            }
            w.put(&[1])?;
            w.put(&u16::from(*code).to_le_bytes())?;
            w.put(&[n as u8])?;
            w.put(&detail.as_bytes()[..n])?;
        }
        PortReply::NodeId(n) => {
            w.put(&[0])?;
            w.put(&n.0.0)?;
        }
        PortReply::Now(t) => {
            w.put(&[0])?;
            w.put(&t.to_le_bytes())?;
        }
        PortReply::Answer(b) => w.put(&[0, u8::from(*b)])?,
        PortReply::Grant { sequence, token } => {
            if token.len() > TOKEN_MAX {
                return Err(PortError::TokenTooLong(token.len()));
            }
            w.put(&[0])?;
            w.put(&sequence.to_le_bytes())?;
            w.put(&[token.len() as u8])?;
            w.put(token)?;
        }
        PortReply::Record(id) => {
            w.put(&[0])?;
            w.put(id)?;
        }
        PortReply::AttestKey { secret, cert } => {
            w.put(&[0])?;
            w.put(&secret[..])?;
            w.put(&cert[..])?;
        }
    }
    Ok(finish(w))
}

/// Checks the header; returns the op byte and the body (exactly `len` bytes).
fn open(msg: &[u8]) -> Result<(Op, &[u8]), PortError> {
    if msg.len() < HEADER_LEN {
        return Err(PortError::Short { need: HEADER_LEN, have: msg.len() });
    }
    let magic: [u8; 4] = [msg[0], msg[1], msg[2], msg[3]];
    if magic != MAGIC {
        return Err(PortError::BadMagic(magic));
    }
    if msg[4] != VERSION {
        return Err(PortError::BadVersion(msg[4]));
    }
    let op = Op::from_u8(msg[5]).ok_or(PortError::UnknownOp(msg[5]))?;
    let len = usize::from(u16::from_le_bytes([msg[6], msg[7]]));
    let body =
        msg.get(HEADER_LEN..HEADER_LEN + len).ok_or(PortError::Short { need: HEADER_LEN + len, have: msg.len() })?;
    Ok((op, body))
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(v)
}

fn array32(b: &[u8], at: usize) -> [u8; 32] {
    let mut v = [0u8; 32];
    v.copy_from_slice(&b[at..at + 32]);
    v
}

fn node_at(b: &[u8], at: usize) -> NodeId {
    let mut v = [0u8; 8];
    v.copy_from_slice(&b[at..at + 8]);
    NodeId(ByteArray(v))
}

/// Decodes a request from `msg` (which may be longer than the message: the rest is ignored).
pub fn decode_request(msg: &[u8]) -> Result<PortRequest, PortError> {
    let (op, b) = open(msg)?;
    let want = match op {
        Op::NodeId | Op::Now | Op::AttestKey => 0,
        Op::BorrowerTrusted | Op::NodeRevoked | Op::OwnGrantRevoked => 8,
        Op::IssueLeaseGrant => 32,
        Op::RecordProvisioning => 64,
    };
    if b.len() != want {
        return Err(PortError::BadLength { op, len: b.len() });
    }
    Ok(match op {
        Op::NodeId => PortRequest::NodeId,
        Op::Now => PortRequest::Now,
        Op::AttestKey => PortRequest::AttestKey,
        Op::BorrowerTrusted => PortRequest::BorrowerTrusted(node_at(b, 0)),
        Op::NodeRevoked => PortRequest::NodeRevoked(node_at(b, 0)),
        Op::OwnGrantRevoked => PortRequest::OwnGrantRevoked(u64_at(b, 0)),
        Op::IssueLeaseGrant => PortRequest::IssueLeaseGrant {
            borrower: node_at(b, 0),
            lease: u64_at(b, 8),
            expires_unix_s: u64_at(b, 16),
            now_unix_s: u64_at(b, 24),
        },
        Op::RecordProvisioning => {
            PortRequest::RecordProvisioning { root_hash: array32(b, 0), statement: array32(b, 32) }
        }
    })
}

/// Decodes the reply to a request of `asked` from `msg` (which may be longer than the message).
pub fn decode_reply(asked: Op, msg: &[u8]) -> Result<PortReply<'_>, PortError> {
    let (op, b) = open(msg)?;
    if op != asked {
        return Err(PortError::WrongOp { asked, answered: op });
    }
    let bad = PortError::BadLength { op, len: b.len() };
    let (&status, rest) = b.split_first().ok_or(bad)?;
    match status {
        0 => {}
        1 => {
            if rest.len() < 3 {
                return Err(bad);
            }
            let code = ErrorCode::from(u16::from_le_bytes([rest[0], rest[1]]));
            let n = usize::from(rest[2]);
            if n > MAX_DETAIL {
                return Err(PortError::DetailTooLong(n));
            }
            if rest.len() != 3 + n {
                return Err(bad);
            }
            let detail = core::str::from_utf8(&rest[3..]).map_err(|_| PortError::DetailNotUtf8)?;
            return Ok(PortReply::Refused { code, detail });
        }
        s => return Err(PortError::BadStatus(s)),
    }
    Ok(match op {
        Op::NodeId if rest.len() == 8 => PortReply::NodeId(node_at(rest, 0)),
        Op::Now if rest.len() == 8 => PortReply::Now(u64_at(rest, 0)),
        Op::BorrowerTrusted | Op::NodeRevoked | Op::OwnGrantRevoked if rest.len() == 1 => match rest[0] {
            0 => PortReply::Answer(false),
            1 => PortReply::Answer(true),
            v => return Err(PortError::BadBool(v)),
        },
        Op::IssueLeaseGrant if rest.len() >= 9 => {
            let n = usize::from(rest[8]);
            if n > TOKEN_MAX {
                return Err(PortError::TokenTooLong(n));
            }
            if rest.len() != 9 + n {
                return Err(bad);
            }
            PortReply::Grant { sequence: u64_at(rest, 0), token: &rest[9..] }
        }
        Op::RecordProvisioning if rest.len() == 32 => PortReply::Record(array32(rest, 0)),
        Op::AttestKey if rest.len() == 32 + ATTEST_CERT_LEN => {
            let (secret, cert) = rest.split_at(32);
            match (secret.try_into(), cert.try_into()) {
                (Ok(secret), Ok(cert)) => PortReply::AttestKey { secret, cert },
                _ => return Err(bad),
            }
        }
        _ => return Err(bad),
    })
}

#[cfg(test)]
mod tests {
    extern crate std;

    use super::*;

    const NODE: NodeId = NodeId(ByteArray([1, 2, 3, 4, 5, 6, 7, 8]));

    fn requests() -> [PortRequest; 8] {
        [
            PortRequest::RecordProvisioning { root_hash: [1; 32], statement: [2; 32] },
            PortRequest::NodeId,
            PortRequest::AttestKey,
            PortRequest::Now,
            PortRequest::BorrowerTrusted(NODE),
            PortRequest::NodeRevoked(NODE),
            PortRequest::OwnGrantRevoked(0x0102_0304_0506_0708),
            PortRequest::IssueLeaseGrant { borrower: NODE, lease: 7, expires_unix_s: 1_800_000_000, now_unix_s: 99 },
        ]
    }

    #[test]
    fn every_request_round_trips_at_its_exact_length_and_refuses_one_byte_off() {
        for req in requests() {
            let mut buf = [0u8; MAX_MESSAGE];
            let n = encode_request(&req, &mut buf).unwrap();
            assert_eq!(&buf[..4], b"PPNP");
            assert_eq!((buf[4], buf[5]), (VERSION, req.op() as u8));
            assert_eq!(usize::from(u16::from_le_bytes([buf[6], buf[7]])), n - HEADER_LEN);
            assert_eq!(decode_request(&buf[..n]), Ok(req));
            // Trailing bytes past the message are ignored (the buffer is a whole page).
            assert_eq!(decode_request(&buf), Ok(req));
            // A body one byte short or long, with len saying so, is refused with the op named.
            for len in [n - HEADER_LEN + 1, (n - HEADER_LEN).wrapping_sub(1)] {
                if len > MAX_MESSAGE {
                    continue;
                }
                let mut m = buf;
                m[6..8].copy_from_slice(&(len as u16).to_le_bytes());
                assert_eq!(decode_request(&m), Err(PortError::BadLength { op: req.op(), len }));
            }
            // Cut anywhere inside the message: Short, never a panic.
            for cut in 0..n {
                assert!(matches!(decode_request(&buf[..cut]), Err(PortError::Short { .. })), "{req:?} cut at {cut}");
            }
        }
        assert_eq!(
            encode_request(&PortRequest::NodeRevoked(NODE), &mut [0u8; 10]),
            Err(PortError::NoRoom { need: 16, have: 10 })
        );
    }

    #[test]
    fn every_reply_round_trips_and_a_refusal_answers_any_op() {
        let token = [0xabu8; TOKEN_MAX];
        let (secret, cert) = ([0x5au8; 32], [0xc3u8; ATTEST_CERT_LEN]);
        let cases: [(Op, PortReply<'_>); 10] = [
            (Op::RecordProvisioning, PortReply::Record([0x77; 32])),
            (Op::AttestKey, PortReply::AttestKey { secret: &secret, cert: &cert }),
            (Op::NodeId, PortReply::NodeId(NODE)),
            (Op::Now, PortReply::Now(1_764_000_000)),
            (Op::BorrowerTrusted, PortReply::Answer(true)),
            (Op::NodeRevoked, PortReply::Answer(false)),
            (Op::OwnGrantRevoked, PortReply::Answer(true)),
            (Op::IssueLeaseGrant, PortReply::Grant { sequence: 42, token: &token }),
            (Op::IssueLeaseGrant, PortReply::Grant { sequence: 1, token: &[] }),
            (Op::NodeId, PortReply::Refused { code: ErrorCode::Rejected, detail: "the borrower is unknown" }),
        ];
        for (op, reply) in cases {
            let mut buf = [0u8; MAX_MESSAGE];
            let n = encode_reply(op, &reply, &mut buf).unwrap();
            assert_eq!(decode_reply(op, &buf[..n]), Ok(reply));
            assert_eq!(decode_reply(op, &buf), Ok(reply), "trailing bytes ignored");
            for cut in 0..n {
                assert!(decode_reply(op, &buf[..cut]).is_err(), "{op:?} cut at {cut}");
            }
            let other = if op == Op::Now { Op::NodeId } else { Op::Now };
            assert_eq!(decode_reply(other, &buf[..n]), Err(PortError::WrongOp { asked: other, answered: op }));
        }
    }

    #[test]
    fn a_long_detail_is_cut_at_a_character_boundary() {
        let long = "é".repeat(100); // 200 bytes
        let mut buf = [0u8; MAX_MESSAGE];
        let n =
            encode_reply(Op::Now, &PortReply::Refused { code: ErrorCode::Internal, detail: &long }, &mut buf).unwrap();
        match decode_reply(Op::Now, &buf[..n]).unwrap() {
            PortReply::Refused { code, detail } => {
                assert_eq!(code, ErrorCode::Internal);
                assert_eq!(detail.len(), MAX_DETAIL);
                assert!(long.starts_with(detail));
            }
            r => panic!("{r:?}"),
        }
    }

    #[test]
    fn bad_headers_and_bodies_are_named() {
        let mut buf = [0u8; MAX_MESSAGE];
        let n = encode_request(&PortRequest::Now, &mut buf).unwrap();
        let mut m = buf;
        m[0] = b'X';
        assert_eq!(decode_request(&m[..n]), Err(PortError::BadMagic(*b"XPNP")));
        let mut m = buf;
        m[4] = 2;
        assert_eq!(decode_request(&m[..n]), Err(PortError::BadVersion(2)));
        let mut m = buf;
        m[5] = 0;
        assert_eq!(decode_request(&m[..n]), Err(PortError::UnknownOp(0)));
        m[5] = 9;
        assert_eq!(decode_request(&m[..n]), Err(PortError::UnknownOp(9)));
        let mut m = buf;
        m[6..8].copy_from_slice(&0xffffu16.to_le_bytes());
        assert_eq!(decode_request(&m), Err(PortError::Short { need: HEADER_LEN + 0xffff, have: MAX_MESSAGE }));

        // Replies: status, bool, token and detail limits, UTF-8.
        let reply = |op: Op, body: &[u8]| {
            let mut m = [0u8; MAX_MESSAGE];
            m[..4].copy_from_slice(&MAGIC);
            m[4] = VERSION;
            m[5] = op as u8;
            m[6..8].copy_from_slice(&(body.len() as u16).to_le_bytes());
            m[8..8 + body.len()].copy_from_slice(body);
            m
        };
        assert_eq!(decode_reply(Op::NodeRevoked, &reply(Op::NodeRevoked, &[2, 0])), Err(PortError::BadStatus(2)));
        assert_eq!(decode_reply(Op::NodeRevoked, &reply(Op::NodeRevoked, &[0, 2])), Err(PortError::BadBool(2)));
        assert_eq!(
            decode_reply(Op::NodeRevoked, &reply(Op::NodeRevoked, &[0])),
            Err(PortError::BadLength { op: Op::NodeRevoked, len: 1 })
        );
        let mut grant = [0u8; 10];
        grant[9] = (TOKEN_MAX + 1) as u8;
        assert_eq!(
            decode_reply(Op::IssueLeaseGrant, &reply(Op::IssueLeaseGrant, &grant)),
            Err(PortError::TokenTooLong(TOKEN_MAX + 1))
        );
        assert_eq!(
            decode_reply(Op::Now, &reply(Op::Now, &[1, 3, 0, MAX_DETAIL as u8 + 1])),
            Err(PortError::DetailTooLong(MAX_DETAIL + 1))
        );
        assert_eq!(decode_reply(Op::Now, &reply(Op::Now, &[1, 3, 0, 1, 0xff])), Err(PortError::DetailNotUtf8));
        assert_eq!(
            encode_reply(Op::IssueLeaseGrant, &PortReply::Grant { sequence: 1, token: &[0; TOKEN_MAX + 1] }, &mut buf),
            Err(PortError::TokenTooLong(TOKEN_MAX + 1))
        );
        // An attestation key one byte short or long.
        for len in [32 + ATTEST_CERT_LEN - 1, 32 + ATTEST_CERT_LEN + 1] {
            let mut body = std::vec![0u8; 1 + len];
            body[0] = 0;
            assert_eq!(
                decode_reply(Op::AttestKey, &reply(Op::AttestKey, &body)),
                Err(PortError::BadLength { op: Op::AttestKey, len: 1 + len })
            );
        }
        assert_eq!(
            std::format!("{}", PortError::BadLength { op: Op::Now, len: 3 }),
            "ledger port: Now with a body of 3 bytes"
        );
    }

    #[test]
    fn the_lender_never_gets_the_attestation_key_and_attest_gets_nothing_about_leases() {
        let all = [1u8, 2, 3, 4, 5, 6, 7, 8].map(|b| Op::from_u8(b).unwrap());
        for op in all {
            let attests = matches!(op, Op::AttestKey | Op::RecordProvisioning);
            assert_eq!(Caller::Lender.allows(op), !attests, "lender, {op:?}");
            assert_eq!(Caller::Attest.allows(op), attests || matches!(op, Op::NodeId | Op::Now), "attest, {op:?}");
        }
    }
}
