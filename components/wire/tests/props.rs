//! Property tests of the wire protocol: every request and response round-trips, bare and through
//! the COBS stream layer; no byte string makes a decoder panic; decoded frames re-encode to the
//! bytes they came from (see `assert_reencodes` for the one exception postcard allows); and the
//! direction, kind and trailing-byte checks return the errors `docs/wire.md` names.
//!
//! Strategies come in two fills: [`Fill::Typical`] (lengths biased small, but reaching every
//! capacity now and then, so the suite stays fast) and [`Fill::Max`] (every `Vec`/`String` at its
//! capacity, every integer at its longest varint), which pins the largest body of every kind.
//!
//! `PROPTEST_CASES` overrides the default of 256 cases for the cheap properties.

use heapless::{String as HString, Vec as HVec};
use ppn_wire::message::{
    AttestRequest, AttestResponse, LedgerRequest, LedgerResponse, LenderRequest, LenderResponse, NodeRequest,
    NodeResponse, PairRequest, PairResponse,
};
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::*;
use proptest::collection::vec;
use proptest::prelude::*;
use proptest::sample::Index;
use proptest::strategy::{Union, ValueTree};
use proptest::test_runner::TestRunner;

// =============================================================================================
// Strategies

/// How full the generated messages are.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Fill {
    /// Lengths mostly small, sometimes anywhere up to capacity, sometimes exactly at capacity;
    /// integers small, random or maximal.
    Typical,
    /// Every `Vec`/`String` exactly at capacity, every integer needing its longest varint, every
    /// `Option` present, the largest enum variant: the largest encoding of each kind.
    Max,
}

fn u64s(fill: Fill) -> BoxedStrategy<u64> {
    match fill {
        Fill::Typical => prop_oneof![0..128u64, any::<u64>(), Just(u64::MAX)].boxed(),
        // 2^63 and above take the full 10-byte varint.
        Fill::Max => ((1u64 << 63)..=u64::MAX).boxed(),
    }
}

fn u32s(fill: Fill) -> BoxedStrategy<u32> {
    match fill {
        Fill::Typical => prop_oneof![0..128u32, any::<u32>(), Just(u32::MAX)].boxed(),
        // 2^28 and above take the full 5-byte varint.
        Fill::Max => ((1u32 << 28)..=u32::MAX).boxed(),
    }
}

fn u16s(fill: Fill) -> BoxedStrategy<u16> {
    match fill {
        Fill::Typical => prop_oneof![0..128u16, any::<u16>(), Just(u16::MAX)].boxed(),
        // 2^14 and above take the full 3-byte varint.
        Fill::Max => ((1u16 << 14)..=u16::MAX).boxed(),
    }
}

/// A `u8`-coded enum: mostly the known values (and their neighbours), sometimes any byte.
/// Built with `From<u8>` so that `Unknown(n)` is only ever produced for an `n` this build does not
/// know: `Unknown(1)` would encode as 1 and decode as the known variant.
fn u8_enum<T: From<u8> + core::fmt::Debug + 'static>() -> BoxedStrategy<T> {
    prop_oneof![3 => (0u8..=10).prop_map(T::from), 1 => any::<u8>().prop_map(T::from)].boxed()
}

fn error_code(fill: Fill) -> BoxedStrategy<ErrorCode> {
    match fill {
        Fill::Typical => {
            prop_oneof![(0u16..=7).prop_map(ErrorCode::from), any::<u16>().prop_map(ErrorCode::from)].boxed()
        }
        Fill::Max => u16s(Fill::Max).prop_map(ErrorCode::from).boxed(),
    }
}

fn byte_array<const N: usize>() -> impl Strategy<Value = ByteArray<N>> + Clone {
    proptest::array::uniform::<_, N>(any::<u8>()).prop_map(ByteArray)
}

fn node_id() -> impl Strategy<Value = NodeId> + Clone {
    byte_array::<8>().prop_map(NodeId)
}

/// A heapless `Vec<T, N>`.
fn hvec<T, S, const N: usize>(elem: S, fill: Fill) -> BoxedStrategy<HVec<T, N>>
where
    T: core::fmt::Debug + 'static,
    S: Strategy<Value = T> + Clone + 'static,
{
    let v = match fill {
        Fill::Typical => prop_oneof![
            4 => vec(elem.clone(), 0..=N.min(8)),
            1 => vec(elem.clone(), 0..=N),
            1 => vec(elem, N),
        ]
        .boxed(),
        Fill::Max => vec(elem, N).boxed(),
    };
    v.prop_map(|v| v.into_iter().collect()).boxed()
}

fn bytes<const N: usize>(fill: Fill) -> BoxedStrategy<HVec<u8, N>> {
    hvec(any::<u8>(), fill)
}

/// A heapless `String<N>` of arbitrary chars (1 to 4 UTF-8 bytes each); [`Fill::Max`] pads it
/// with ASCII to exactly `N` bytes.
fn hstring<const N: usize>(fill: Fill) -> BoxedStrategy<HString<N>> {
    vec(any::<char>(), 0..=N)
        .prop_map(move |chars| {
            let mut s = HString::<N>::new();
            for c in chars {
                let _ = s.push(c); // skip the chars that no longer fit
            }
            if fill == Fill::Max {
                while s.len() < N {
                    s.push('~').unwrap();
                }
            }
            s
        })
        .boxed()
}

fn record(fill: Fill) -> BoxedStrategy<Record> {
    bytes::<RECORD_MAX>(fill)
}

fn digests<const N: usize>(fill: Fill) -> BoxedStrategy<HVec<Digest, N>> {
    hvec(byte_array::<32>(), fill)
}

fn revoke_target(fill: Fill) -> BoxedStrategy<RevokeTarget> {
    let range = (node_id(), u64s(fill), u64s(fill)).prop_map(|(issuer, first, last)| RevokeTarget::GrantRange {
        issuer,
        first,
        last,
    });
    match fill {
        Fill::Typical => prop_oneof![
            node_id().prop_map(|node| RevokeTarget::Node { node }),
            (node_id(), u64s(fill)).prop_map(|(issuer, sequence)| RevokeTarget::Grant { issuer, sequence }),
            range,
        ]
        .boxed(),
        // The largest variant.
        Fill::Max => range.boxed(),
    }
}

/// Requests of one kind; `None` for kinds that have no request ([`Kind::Error`]).
///
/// The match names every kind and has no wildcard, so a kind added to the protocol does not
/// compile here until it has a strategy.
fn request_of(kind: Kind, f: Fill) -> Option<BoxedStrategy<Request>> {
    use {
        AttestRequest as A, LedgerRequest as Le, LenderRequest as Ln, NodeRequest as N, PairRequest as P, Request as R,
    };
    Some(match kind {
        Kind::Error | Kind::Unknown(_) => return None,
        Kind::NodeIdentity => Just(R::Node(N::Identity)).boxed(),
        Kind::NodePublicKeys => Just(R::Node(N::PublicKeys)).boxed(),
        Kind::NodeStatus => Just(R::Node(N::Status)).boxed(),
        Kind::LedgerIssueGrant => (node_id(), u8_enum(), u64s(f), u64s(f))
            .prop_map(|(grantee, resource_type, resource_id, expires_unix_s)| {
                R::Ledger(Le::IssueGrant(IssueGrant { grantee, resource_type, resource_id, expires_unix_s }))
            })
            .boxed(),
        Kind::LedgerVerifyToken => {
            bytes::<TOKEN_MAX>(f).prop_map(|token| R::Ledger(Le::VerifyToken(VerifyToken { token }))).boxed()
        }
        Kind::LedgerRevoke => revoke_target(f).prop_map(|target| R::Ledger(Le::Revoke(Revoke { target }))).boxed(),
        Kind::LedgerIngestRecords => {
            hvec(record(f), f).prop_map(|records| R::Ledger(Le::IngestRecords(IngestRecords { records }))).boxed()
        }
        Kind::LedgerHeads => Just(R::Ledger(Le::Heads)).boxed(),
        Kind::LedgerRecordsLacking => (digests(f), u16s(f))
            .prop_map(|(peer_heads, limit)| R::Ledger(Le::RecordsLacking(RecordsLacking { peer_heads, limit })))
            .boxed(),
        Kind::LedgerSummary => Just(R::Ledger(Le::Summary)).boxed(),
        Kind::LedgerRoots => Just(R::Ledger(Le::Roots)).boxed(),
        Kind::LedgerMembers => Just(R::Ledger(Le::Members)).boxed(),
        Kind::LedgerEndorse => {
            bytes::<TOKEN_MAX>(f).prop_map(|token| R::Ledger(Le::Endorse(Endorse { token }))).boxed()
        }
        Kind::LedgerVerifyEndorsed => (bytes::<TOKEN_MAX>(f), byte_array())
            .prop_map(|(token, signature)| R::Ledger(Le::VerifyEndorsed(VerifyEndorsed { token, signature })))
            .boxed(),
        Kind::LenderPoolStatus => Just(R::Lender(Ln::PoolStatus)).boxed(),
        Kind::LenderReserve => (node_id(), u32s(f), u64s(f))
            .prop_map(|(borrower, blocks, expires_unix_s)| {
                R::Lender(Ln::Reserve(Reserve { borrower, blocks, expires_unix_s }))
            })
            .boxed(),
        Kind::LenderCommitLease => {
            u64s(f).prop_map(|reservation_id| R::Lender(Ln::CommitLease(CommitLease { reservation_id }))).boxed()
        }
        Kind::LenderRelease => u64s(f).prop_map(|lease_id| R::Lender(Ln::Release(Release { lease_id }))).boxed(),
        Kind::AttestSignRootHash => (hstring::<ATTEST_NAME_MAX>(f), byte_array(), byte_array(), u64s(f), u64s(f))
            .prop_map(|(image, root_hash, salt, data_blocks, hash_offset)| {
                R::Attest(A::SignRootHash(SignRootHash { image, root_hash, salt, data_blocks, hash_offset }))
            })
            .boxed(),
        Kind::AttestSignReport => {
            (hstring::<ATTEST_NAME_MAX>(f), byte_array(), bytes::<PROVISIONING_MAX>(f), bytes::<NONCE_MAX>(f))
                .prop_map(|(vm, root_hash, provisioning, nonce)| {
                    R::Attest(A::SignReport(SignReport { vm, root_hash, provisioning, nonce }))
                })
                .boxed()
        }
        Kind::PairBegin => (u8_enum(), hstring::<PAIR_CODE_MAX>(f), byte_array())
            .prop_map(|(role, code, wireguard_key)| R::Pair(P::Begin(PairBegin { role, code, wireguard_key })))
            .boxed(),
        Kind::PairStep => {
            bytes::<PAIR_MESSAGE_MAX>(f).prop_map(|message| R::Pair(P::Step(PairStep { message }))).boxed()
        }
        Kind::PairDecide => (node_id(), u32s(f), any::<bool>(), bytes::<RECORD_MAX>(f))
            .prop_map(|(peer, sas, admit, peer_record)| {
                R::Pair(P::Decide(PairDecide { peer, sas, admit, peer_record }))
            })
            .boxed(),
    })
}

/// Responses of one kind (every known kind has one).
fn response_of(kind: Kind, f: Fill) -> Option<BoxedStrategy<Response>> {
    use {
        AttestResponse as A, LedgerResponse as Le, LenderResponse as Ln, NodeResponse as N, PairResponse as P,
        Response as R,
    };
    Some(match kind {
        Kind::Unknown(_) => return None,
        Kind::Error => (error_code(f), hstring::<DETAIL_MAX>(f))
            .prop_map(|(code, detail)| R::Error(ErrorBody { code, detail }))
            .boxed(),
        Kind::NodeIdentity => (node_id(), u8_enum(), hstring::<VERSION_STRING_MAX>(f))
            .prop_map(|(node_id, platform, tcb_version)| {
                R::Node(N::Identity(NodeIdentity { node_id, platform, tcb_version }))
            })
            .boxed(),
        Kind::NodePublicKeys => {
            let attestation_key = match f {
                Fill::Typical => proptest::option::of(byte_array::<32>()).boxed(),
                Fill::Max => byte_array::<32>().prop_map(Some).boxed(),
            };
            (node_id(), byte_array(), attestation_key)
                .prop_map(|(node_id, signing_key, attestation_key)| {
                    R::Node(N::PublicKeys(NodePublicKeys { node_id, signing_key, attestation_key }))
                })
                .boxed()
        }
        Kind::NodeStatus => {
            let service = (any::<u8>(), u8_enum()).prop_map(|(service, state)| ServiceStatus { service, state });
            (
                node_id(),
                u8_enum(),
                hstring::<VERSION_STRING_MAX>(f),
                u64s(f),
                u32s(f),
                u64s(f),
                u64s(f),
                hvec(service, f),
            )
                .prop_map(
                    |(
                        node_id,
                        platform,
                        tcb_version,
                        uptime_ms,
                        boot_count,
                        requests_served,
                        requests_failed,
                        services,
                    )| {
                        R::Node(N::Status(NodeStatus {
                            node_id,
                            platform,
                            tcb_version,
                            uptime_ms,
                            boot_count,
                            requests_served,
                            requests_failed,
                            services,
                        }))
                    },
                )
                .boxed()
        }
        Kind::LedgerIssueGrant => (bytes::<TOKEN_MAX>(f), u64s(f))
            .prop_map(|(token, sequence)| R::Ledger(Le::IssueGrant(Grant { token, sequence })))
            .boxed(),
        Kind::LedgerVerifyToken => {
            u8_enum().prop_map(|verdict| R::Ledger(Le::VerifyToken(TokenVerdict { verdict }))).boxed()
        }
        Kind::LedgerEndorse => {
            byte_array().prop_map(|signature| R::Ledger(Le::Endorse(Endorsement { signature }))).boxed()
        }
        Kind::LedgerVerifyEndorsed => {
            u8_enum().prop_map(|verdict| R::Ledger(Le::VerifyEndorsed(TokenVerdict { verdict }))).boxed()
        }
        Kind::LedgerRevoke => byte_array().prop_map(|record_id| R::Ledger(Le::Revoke(Revoked { record_id }))).boxed(),
        Kind::LedgerIngestRecords => {
            hvec(u8_enum(), f).prop_map(|outcomes| R::Ledger(Le::IngestRecords(Ingested { outcomes }))).boxed()
        }
        Kind::LedgerHeads => (digests(f), digests(f), u64s(f))
            .prop_map(|(heads, known, record_count)| R::Ledger(Le::Heads(Heads { heads, known, record_count })))
            .boxed(),
        Kind::LedgerRecordsLacking => (hvec(record(f), f), any::<bool>())
            .prop_map(|(records, more)| R::Ledger(Le::RecordsLacking(Records { records, more })))
            .boxed(),
        // Arbitrary values: the wire layer does not check that the counts agree with each other or
        // that `revoked_nodes` is ascending; the ledger that fills them in does.
        Kind::LedgerMembers => {
            let wireguard = match f {
                Fill::Typical => proptest::option::of(byte_array::<32>()).boxed(),
                Fill::Max => byte_array::<32>().prop_map(Some).boxed(),
            };
            let member = (node_id(), byte_array(), wireguard, any::<bool>(), any::<bool>()).prop_map(
                |(node_id, signing_key, wireguard, root, trusted)| Member {
                    node_id,
                    signing_key,
                    wireguard,
                    root,
                    trusted,
                },
            );
            hvec(member, f).prop_map(|members| R::Ledger(Le::Members(Members { members }))).boxed()
        }
        Kind::LedgerSummary => {
            (u64s(f), u32s(f), u32s(f), u64s(f), u32s(f), u32s(f), u32s(f), hvec(node_id(), f), u32s(f), u64s(f))
                .prop_map(
                    |(
                        record_count,
                        heads,
                        pending,
                        pending_dropped,
                        root_count,
                        admitted_count,
                        revoked_node_count,
                        revoked_nodes,
                        revoked_grant_ranges,
                        next_sequence,
                    )| {
                        R::Ledger(Le::Summary(LedgerSummary {
                            record_count,
                            heads,
                            pending,
                            pending_dropped,
                            root_count,
                            admitted_count,
                            revoked_node_count,
                            revoked_nodes,
                            revoked_grant_ranges,
                            next_sequence,
                        }))
                    },
                )
                .boxed()
        }
        Kind::LedgerRoots => {
            hvec(byte_array::<32>(), f).prop_map(|keys| R::Ledger(Le::Roots(RootSet { keys }))).boxed()
        }
        Kind::LenderPoolStatus => (u32s(f), u32s(f), u32s(f), u32s(f), u32s(f), u32s(f))
            .prop_map(|(block_bytes, total, free, reserved, lent, in_use)| {
                R::Lender(Ln::PoolStatus(Pool { block_bytes, total, free, reserved, lent, in_use }))
            })
            .boxed(),
        Kind::LenderReserve => (u64s(f), u32s(f))
            .prop_map(|(reservation_id, blocks)| R::Lender(Ln::Reserve(Reservation { reservation_id, blocks })))
            .boxed(),
        Kind::LenderCommitLease => (u64s(f), bytes::<TOKEN_MAX>(f))
            .prop_map(|(lease_id, token)| R::Lender(Ln::CommitLease(Lease { lease_id, token })))
            .boxed(),
        Kind::LenderRelease => (u32s(f), any::<bool>())
            .prop_map(|(blocks, scrubbed)| R::Lender(Ln::Release(Released { blocks, scrubbed })))
            .boxed(),
        Kind::AttestSignRootHash => bytes::<PROVISIONING_MAX>(f)
            .prop_map(|statement| R::Attest(A::SignRootHash(ProvisioningStatement { statement })))
            .boxed(),
        Kind::AttestSignReport => {
            bytes::<REPORT_MAX>(f).prop_map(|cose_sign1| R::Attest(A::SignReport(Report { cose_sign1 }))).boxed()
        }
        Kind::PairBegin | Kind::PairStep => {
            let peer = (node_id(), byte_array(), byte_array(), u32s(f)).prop_map(
                |(node_id, signing_key, wireguard_key, sas)| PairedPeer { node_id, signing_key, wireguard_key, sas },
            );
            let paired = match f {
                Fill::Typical => proptest::option::of(peer).boxed(),
                Fill::Max => peer.prop_map(Some).boxed(),
            };
            let begin = kind == Kind::PairBegin;
            (bytes::<PAIR_MESSAGE_MAX>(f), paired)
                .prop_map(move |(message, paired)| {
                    let p = PairProgress { message, paired };
                    if begin { R::Pair(P::Begin(p)) } else { R::Pair(P::Step(p)) }
                })
                .boxed()
        }
        Kind::PairDecide => {
            let record_id = match f {
                Fill::Typical => proptest::option::of(byte_array::<32>()).boxed(),
                Fill::Max => byte_array::<32>().prop_map(Some).boxed(),
            };
            (record_id, bytes::<RECORD_MAX>(f))
                .prop_map(|(record_id, record)| R::Pair(P::Decide(PairDecided { record_id, record })))
                .boxed()
        }
    })
}

/// Any request, every kind equally likely.
fn request(f: Fill) -> BoxedStrategy<Request> {
    Union::new(Kind::ALL.iter().filter_map(|&k| request_of(k, f))).boxed()
}

/// Any response (the error response included), every kind equally likely.
fn response(f: Fill) -> BoxedStrategy<Response> {
    Union::new(Kind::ALL.iter().filter_map(|&k| response_of(k, f))).boxed()
}

/// A request or a response.
#[derive(Debug, Clone, PartialEq, Eq)]
enum Msg {
    Req(Request),
    Resp(Response),
}

impl Msg {
    fn kind(&self) -> Kind {
        match self {
            Msg::Req(r) => r.kind(),
            Msg::Resp(r) => r.kind(),
        }
    }

    fn is_response(&self) -> bool {
        matches!(self, Msg::Resp(_))
    }

    fn encode(&self, id: u32, out: &mut [u8]) -> Result<usize, Error> {
        match self {
            Msg::Req(r) => encode_request(id, r, out),
            Msg::Resp(r) => encode_response(id, r, out),
        }
    }

    fn to_frame(&self, id: u32) -> Vec<u8> {
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let n = self.encode(id, &mut out).expect("every generated message encodes");
        out.truncate(n);
        out
    }

    /// Decodes `bytes` in this message's direction.
    fn decode_like(&self, bytes: &[u8]) -> Result<(u32, Msg), Error> {
        match self {
            Msg::Req(_) => decode_request(bytes).map(|(id, r)| (id, Msg::Req(r))),
            Msg::Resp(_) => decode_response(bytes).map(|(id, r)| (id, Msg::Resp(r))),
        }
    }

    /// Decodes `bytes` in the other direction.
    fn decode_opposite(&self, bytes: &[u8]) -> Result<(u32, Msg), Error> {
        match self {
            Msg::Req(_) => decode_response(bytes).map(|(id, r)| (id, Msg::Resp(r))),
            Msg::Resp(_) => decode_request(bytes).map(|(id, r)| (id, Msg::Req(r))),
        }
    }
}

fn message(f: Fill) -> BoxedStrategy<Msg> {
    prop_oneof![request(f).prop_map(Msg::Req), response(f).prop_map(Msg::Resp)].boxed()
}

/// The largest body of each kind, `(kind, request, response)`, as `docs/wire.md` lists them.
/// `test_max_sizes` checks that a [`Fill::Max`] message encodes to exactly this.
const MAX_BODY: &[(Kind, Option<usize>, usize)] = &[
    (Kind::Error, None, 3 + 2 + DETAIL_MAX),
    (Kind::NodeIdentity, Some(0), 8 + 1 + 1 + VERSION_STRING_MAX),
    (Kind::NodePublicKeys, Some(0), 8 + 32 + 1 + 32),
    (Kind::NodeStatus, Some(0), 8 + 1 + 1 + VERSION_STRING_MAX + 10 + 5 + 10 + 10 + 1 + 8 * 2),
    (Kind::LedgerIssueGrant, Some(8 + 1 + 10 + 10), 1 + TOKEN_MAX + 10),
    (Kind::LedgerVerifyToken, Some(1 + TOKEN_MAX), 1),
    (Kind::LedgerRevoke, Some(1 + 8 + 10 + 10), 32),
    (Kind::LedgerIngestRecords, Some(1 + RECORDS_PER_FRAME * (2 + RECORD_MAX)), 1 + RECORDS_PER_FRAME),
    (Kind::LedgerHeads, Some(0), 1 + HEADS_MAX * 32 + 1 + KNOWN_MAX * 32 + 10),
    (Kind::LedgerRecordsLacking, Some(1 + HAVE_MAX * 32 + 3), 1 + RECORDS_PER_FRAME * (2 + RECORD_MAX) + 1),
    // record_count, heads, pending, pending_dropped, root_count, admitted_count,
    // revoked_node_count, revoked_nodes, revoked_grant_ranges, next_sequence.
    (Kind::LedgerSummary, Some(0), 10 + 5 + 5 + 10 + 5 + 5 + 5 + (1 + REVOKED_NODES_MAX * 8) + 5 + 10),
    (Kind::LedgerRoots, Some(0), 1 + ROOTS_MAX * 32),
    // node id, signing key, Some(WireGuard key), root, trusted.
    (Kind::LedgerMembers, Some(0), 2 + MEMBERS_MAX * (8 + 32 + 1 + 32 + 1 + 1)),
    (Kind::LedgerEndorse, Some(1 + TOKEN_MAX), 64),
    (Kind::LedgerVerifyEndorsed, Some(1 + TOKEN_MAX + 64), 1),
    (Kind::LenderPoolStatus, Some(0), 6 * 5),
    (Kind::LenderReserve, Some(8 + 5 + 10), 10 + 5),
    (Kind::LenderCommitLease, Some(10), 10 + 1 + TOKEN_MAX),
    (Kind::LenderRelease, Some(10), 5 + 1),
    // image, root hash, salt, data blocks, hash offset / statement.
    (Kind::AttestSignRootHash, Some(1 + ATTEST_NAME_MAX + 32 + 32 + 10 + 10), 2 + PROVISIONING_MAX),
    // vm, root hash, provisioning, nonce.
    (Kind::AttestSignReport, Some(1 + ATTEST_NAME_MAX + 32 + 2 + PROVISIONING_MAX + 1 + NONCE_MAX), 2 + REPORT_MAX),
    // role, code, WireGuard key / message, Some(node id, signing key, WireGuard key, sas).
    (Kind::PairBegin, Some(1 + 1 + PAIR_CODE_MAX + 32), 2 + PAIR_MESSAGE_MAX + 1 + 8 + 32 + 32 + 5),
    (Kind::PairStep, Some(2 + PAIR_MESSAGE_MAX), 2 + PAIR_MESSAGE_MAX + 1 + 8 + 32 + 32 + 5),
    (Kind::PairDecide, Some(8 + 5 + 1 + 2 + RECORD_MAX), 1 + 32 + 2 + RECORD_MAX),
];

fn max_body(kind: Kind, response: bool) -> usize {
    let &(_, req, resp) = MAX_BODY.iter().find(|(k, _, _)| *k == kind).expect("every kind has a row");
    if response { resp } else { req.expect("a kind with a request") }
}

/// Bytes that a hostile proxy might send: usually random, sometimes behind a valid header.
fn hostile_bytes() -> BoxedStrategy<Vec<u8>> {
    let header = (prop_oneof![Just(0u8), Just(1u8), any::<u8>()], any_kind_number(), any::<u32>());
    prop_oneof![
        3 => vec(any::<u8>(), 0..=64),
        1 => vec(any::<u8>(), 0..=20 * 1024),
        // A valid-looking header, a body length that mostly matches, and a random body.
        4 => (
            header,
            prop_oneof![vec(any::<u8>(), 0..=16), vec(any::<u8>(), 0..=256)],
            prop_oneof![3 => Just(None), 1 => any::<u32>().prop_map(Some)],
        )
            .prop_map(|((flags, kind, id), body, len)| {
                let mut b = raw_header(flags, kind, id, len.unwrap_or(body.len() as u32));
                b.extend_from_slice(&body);
                b
            }),
    ]
    .boxed()
}

/// A kind number: mostly known ones, sometimes any.
fn any_kind_number() -> BoxedStrategy<u16> {
    prop_oneof![3 => proptest::sample::select(Kind::ALL).prop_map(Kind::to_u16), 1 => any::<u16>()].boxed()
}

fn raw_header(flags: u8, kind: u16, id: u32, body_len: u32) -> Vec<u8> {
    let mut b = Vec::with_capacity(HEADER_LEN);
    b.extend_from_slice(&MAGIC);
    b.push(VERSION);
    b.push(flags);
    b.extend_from_slice(&kind.to_le_bytes());
    b.extend_from_slice(&id.to_le_bytes());
    b.extend_from_slice(&body_len.to_le_bytes());
    b
}

fn set_body_len(frame: &mut [u8], len: u32) {
    frame[12..16].copy_from_slice(&len.to_le_bytes());
}

fn stream_encode(frame: &[u8]) -> Vec<u8> {
    let mut out = vec![0u8; MAX_ENCODED_LEN];
    let n = stream::encode(frame, &mut out).expect("a frame of at most MAX_FRAME_LEN bytes stream-encodes");
    out.truncate(n);
    out
}

/// Feeds `input` to `d` in pieces of the given sizes (cycled), collecting every chunk's outcome.
fn deframe(d: &mut Deframer, mut input: &[u8], pieces: &[usize]) -> Vec<Result<Vec<u8>, Error>> {
    let mut out = Vec::new();
    let mut sizes = pieces.iter().copied().cycle();
    while !input.is_empty() {
        let take = sizes.next().unwrap_or(usize::MAX).clamp(1, input.len());
        let mut piece = &input[..take];
        input = &input[take..];
        while !piece.is_empty() {
            let (used, event) = d.push(piece);
            assert!(used > 0 && used <= piece.len(), "push consumed {used} of {}", piece.len());
            piece = &piece[used..];
            if let Some(event) = event {
                if let Ok(frame) = &event {
                    // A chunk decodes to fewer bytes than it has, and no chunk exceeds the buffer.
                    assert!(frame.len() < MAX_ENCODED_LEN - 1);
                }
                out.push(event.map(<[u8]>::to_vec));
            }
            assert!(d.pending() < MAX_ENCODED_LEN);
        }
    }
    out
}

// =============================================================================================
// Checks shared by the properties

/// A decoded frame re-encodes to the bytes it was decoded from.
///
/// Postcard is canonical for every type here but one: it accepts varints with redundant
/// continuation bytes (`0x80 0x00` decodes as 0, like `0x00`), as long as the varint stays within
/// the type's maximum length and its last byte does not overflow the type. Every other encoding
/// is determined by the value: the header is fixed-size and copied as is, `ByteArray`s and `u8`
/// enums are raw bytes (`Unknown(n)` keeps `n`), `bool` and `Option` tags must be exactly 0 or 1,
/// strings must be UTF-8. So the re-encoding is byte-identical exactly when the input's varints
/// were minimal; otherwise it is strictly shorter (each redundant byte is dropped) and decodes to
/// the same message. That is what is asserted: same header bytes (bar the body length), same
/// message, never longer, and identical whenever it has the same length.
fn assert_reencodes(bytes: &[u8], decoded: &Result<(u32, Msg), Error>) {
    let Ok((id, msg)) = decoded else { return };
    let re = msg.to_frame(*id);
    assert_eq!(&re[..12], &bytes[..12], "header (magic, version, flags, kind, id) changed");
    assert_eq!(msg.decode_like(&re).as_ref(), Ok(&(*id, msg.clone())), "re-encoding decodes differently");
    assert!(re.len() <= bytes.len(), "re-encoding is longer: {} > {}", re.len(), bytes.len());
    if re.len() == bytes.len() {
        assert_eq!(re, bytes, "re-encoding of a frame with minimal varints differs");
    }
}

/// Every frame-level entry point on one byte string: none panics, they agree with each other, and
/// whatever decodes re-encodes (see [`assert_reencodes`]).
fn check_frame_bytes(data: &[u8]) {
    let checked = Frame::new_checked(data);
    let parsed = Header::parse(data);
    let as_request = decode_request(data).map(|(id, r)| (id, Msg::Req(r)));
    let as_response = decode_response(data).map(|(id, r)| (id, Msg::Resp(r)));

    // `Header::parse` runs the same checks as `Frame::new_checked`, in the same order, minus the
    // ones that need the body.
    match (&parsed, &checked) {
        (Err(e), _) => assert_eq!(checked.as_ref().err(), Some(e)),
        (Ok(h), Ok(f)) => assert_eq!(f.header(), *h),
        (Ok(h), Err(e)) => {
            let total = HEADER_LEN + h.body_len as usize;
            let expected = if data.len() < total {
                Error::Truncated { need: total, have: data.len() }
            } else {
                Error::TrailingFrameBytes { extra: data.len() - total }
            };
            assert_eq!(*e, expected);
        }
    }

    match &checked {
        // The frame checks come first: both directions fail the same way.
        Err(e) => {
            assert_eq!(as_request.as_ref().err(), Some(e));
            assert_eq!(as_response.as_ref().err(), Some(e));
        }
        Ok(f) => {
            let kind = f.kind().to_u16();
            // Exactly one direction gets past the direction check.
            let (wrong, right) =
                if f.is_response() { (&as_request, &as_response) } else { (&as_response, &as_request) };
            let got = if f.is_response() { "response" } else { "request" };
            assert_eq!(wrong.as_ref().err(), Some(&Error::WrongDirection { kind, got }));
            match right {
                Ok((id, msg)) => {
                    assert_eq!(*id, f.request_id());
                    assert_eq!(msg.kind(), f.kind());
                    assert_eq!(msg.is_response(), f.is_response());
                }
                Err(Error::UnknownKind(n)) => assert!(matches!(f.kind(), Kind::Unknown(m) if m == *n)),
                Err(Error::WrongDirection { kind: k, got: "request" }) => {
                    assert_eq!((f.kind(), *k), (Kind::Error, kind), "only an error frame cannot be a request")
                }
                Err(Error::MalformedBody(k)) => assert_eq!(*k, kind),
                Err(Error::TrailingBodyBytes { kind: k, extra }) => {
                    assert_eq!(*k, kind);
                    assert!(*extra > 0 && *extra <= f.body().len());
                }
                Err(e) => panic!("a frame that passed its checks failed with {e:?}"),
            }
        }
    }

    assert_reencodes(data, &as_request);
    assert_reencodes(data, &as_response);
    assert_eq!(fuzz_decode(data), decode_request(data).map(|_| ()));
}

/// [`check_frame_bytes`] on `data` itself and on every chunk the deframer finds in it.
fn check_any_bytes(data: &[u8], pieces: &[usize]) {
    check_frame_bytes(data);
    let mut d = Deframer::new();
    for frame in deframe(&mut d, data, pieces).into_iter().flatten() {
        check_frame_bytes(&frame);
    }
}

// =============================================================================================
// Deterministic tests

/// Every kind's strategy yields messages of that kind, in the right direction.
#[test]
fn strategies_cover_every_kind() {
    let mut runner = TestRunner::deterministic();
    let mut requests = 0;
    for &kind in Kind::ALL {
        for fill in [Fill::Typical, Fill::Max] {
            if let Some(s) = request_of(kind, fill) {
                for _ in 0..4 {
                    assert_eq!(s.new_tree(&mut runner).unwrap().current().kind(), kind);
                }
                requests += 1;
            }
            let s = response_of(kind, fill).expect("every known kind has a response");
            for _ in 0..4 {
                assert_eq!(s.new_tree(&mut runner).unwrap().current().kind(), kind);
            }
        }
    }
    // Every kind but the error frame has a request.
    assert_eq!(requests, 2 * (Kind::ALL.len() - 1));
    assert_eq!(MAX_BODY.len(), Kind::ALL.len());
}

/// The largest message of every kind fits a frame, and its size is the one documented.
#[test]
fn test_max_sizes() {
    let mut runner = TestRunner::deterministic();
    let mut largest = 0;
    for &kind in Kind::ALL {
        let mut msgs = vec![Msg::Resp(response_of(kind, Fill::Max).unwrap().new_tree(&mut runner).unwrap().current())];
        if let Some(s) = request_of(kind, Fill::Max) {
            msgs.push(Msg::Req(s.new_tree(&mut runner).unwrap().current()));
        }
        for msg in msgs {
            let mut out = vec![0u8; MAX_FRAME_LEN];
            let n = msg.encode(u32::MAX, &mut out).unwrap_or_else(|e| panic!("{kind:?} at max size: {e}"));
            let body = n - HEADER_LEN;
            assert_eq!(body, max_body(kind, msg.is_response()), "{msg:?}");
            assert!(body <= MAX_BODY_LEN);
            largest = largest.max(n);
            assert_eq!(msg.decode_like(&out[..n]), Ok((u32::MAX, msg.clone())));
            let enc = stream_encode(&out[..n]);
            assert!(enc.len() <= MAX_ENCODED_LEN);
        }
    }
    // Ingest and records-lacking frames are the largest: 12 records of 1024 bytes.
    assert_eq!(largest, HEADER_LEN + 1 + RECORDS_PER_FRAME * (2 + RECORD_MAX) + 1);
}

/// Non-minimal varints are accepted (see [`assert_reencodes`]); overlong ones are not.
#[test]
fn non_minimal_varints_decode_and_reencode_shorter() {
    let release0 = Request::Lender(LenderRequest::Release(Release { lease_id: 0 }));
    let canonical = Msg::Req(release0.clone()).to_frame(9);
    assert_eq!(&canonical[HEADER_LEN..], &[0x00]);

    let mut padded = raw_header(0, Kind::LenderRelease.to_u16(), 9, 3);
    padded.extend_from_slice(&[0x80, 0x80, 0x00]);
    let decoded = decode_request(&padded);
    assert_eq!(decoded, Ok((9, release0)));
    assert_reencodes(&padded, &decoded.map(|(id, r)| (id, Msg::Req(r))));

    // Eleven bytes is past a u64's maximum of ten.
    let mut overlong = raw_header(0, Kind::LenderRelease.to_u16(), 9, 11);
    overlong.extend_from_slice(&[0x80; 10]);
    overlong.push(0x00);
    assert_eq!(decode_request(&overlong), Err(Error::MalformedBody(Kind::LenderRelease.to_u16())));

    // A u16 varint whose third byte overflows 16 bits (0x03 is the largest allowed).
    let mut overflow = raw_header(0, Kind::LedgerRecordsLacking.to_u16(), 9, 4);
    overflow.extend_from_slice(&[0x00, 0xFF, 0xFF, 0x04]);
    assert_eq!(decode_request(&overflow), Err(Error::MalformedBody(Kind::LedgerRecordsLacking.to_u16())));
}

/// A `bool` or `Option` tag other than 0 or 1, invalid UTF-8 and an over-capacity length are
/// malformed bodies, not panics or silent truncations.
#[test]
fn strict_tags_utf8_and_capacities() {
    let k = Kind::LenderRelease.to_u16();
    let mut released = raw_header(FLAG_RESPONSE, k, 1, 2);
    released.extend_from_slice(&[0x05, 0x02]); // blocks 5, scrubbed = 2
    assert_eq!(decode_response(&released), Err(Error::MalformedBody(k)));

    let k = Kind::NodePublicKeys.to_u16();
    let mut keys = raw_header(FLAG_RESPONSE, k, 1, 8 + 32 + 1);
    keys.extend_from_slice(&[0u8; 40]);
    keys.push(2); // Option tag
    assert_eq!(decode_response(&keys), Err(Error::MalformedBody(k)));

    let k = Kind::Error.to_u16();
    let mut bad_utf8 = raw_header(FLAG_RESPONSE, k, 0, 4);
    bad_utf8.extend_from_slice(&[0x01, 0x02, 0xC3, 0x28]);
    assert_eq!(decode_response(&bad_utf8), Err(Error::MalformedBody(k)));

    // A token of TOKEN_MAX + 1 bytes.
    let k = Kind::LedgerVerifyToken.to_u16();
    let mut long_token = raw_header(0, k, 1, 1 + TOKEN_MAX as u32 + 1);
    long_token.push(TOKEN_MAX as u8 + 1);
    long_token.extend_from_slice(&[7u8; TOKEN_MAX + 1]);
    assert_eq!(decode_request(&long_token), Err(Error::MalformedBody(k)));

    // A length prefix far beyond the body.
    let mut huge = raw_header(0, k, 1, 5);
    huge.extend_from_slice(&[0xFF, 0xFF, 0xFF, 0xFF, 0x0F]);
    assert_eq!(decode_request(&huge), Err(Error::MalformedBody(k)));

    // A revoke target variant that does not exist.
    let k = Kind::LedgerRevoke.to_u16();
    let mut variant = raw_header(0, k, 1, 9);
    variant.push(3);
    variant.extend_from_slice(&[0u8; 8]);
    assert_eq!(decode_request(&variant), Err(Error::MalformedBody(k)));

    // A root set of ROOTS_MAX + 1 keys; the same bytes with ROOTS_MAX keys decode.
    let k = Kind::LedgerRoots.to_u16();
    let mut roots = raw_header(FLAG_RESPONSE, k, 1, 1 + 32 * (ROOTS_MAX as u32 + 1));
    roots.push(ROOTS_MAX as u8 + 1);
    roots.extend_from_slice(&[0x33; 32 * (ROOTS_MAX + 1)]);
    assert_eq!(decode_response(&roots), Err(Error::MalformedBody(k)));
    roots[HEADER_LEN] = ROOTS_MAX as u8;
    roots.truncate(roots.len() - 32);
    set_body_len(&mut roots, 1 + 32 * ROOTS_MAX as u32);
    let keys = [ByteArray([0x33; 32]); ROOTS_MAX].into_iter().collect();
    assert_eq!(decode_response(&roots), Ok((1, Response::Ledger(LedgerResponse::Roots(RootSet { keys })))));

    // A summary listing REVOKED_NODES_MAX + 1 revoked nodes.
    let k = Kind::LedgerSummary.to_u16();
    let mut summary = raw_header(FLAG_RESPONSE, k, 1, 7 + 1 + 8 * (REVOKED_NODES_MAX as u32 + 1) + 2);
    summary.extend_from_slice(&[0; 7]);
    summary.push(REVOKED_NODES_MAX as u8 + 1);
    summary.extend_from_slice(&[0x44; 8 * (REVOKED_NODES_MAX + 1)]);
    summary.extend_from_slice(&[0; 2]);
    assert_eq!(decode_response(&summary), Err(Error::MalformedBody(k)));
}

/// Any frame of at most `MAX_FRAME_LEN` bytes, whatever its zeros, fits `MAX_ENCODED_LEN` on a
/// stream; these are the layouts closest to COBS's worst case.
#[test]
fn worst_case_cobs_layouts_fit() {
    let mut layouts: Vec<Vec<u8>> = Vec::new();
    for lead in [0usize, 1, 253, 254, 255] {
        let mut f = vec![0x5Au8; MAX_FRAME_LEN];
        if lead < MAX_FRAME_LEN {
            f[lead] = 0;
        }
        layouts.push(f);
    }
    for len in [0, 1, 253, 254, 255, 508, MAX_FRAME_LEN - 1, MAX_FRAME_LEN] {
        layouts.push(vec![0x11; len]);
        layouts.push(vec![0x00; len]);
    }
    for f in layouts {
        let enc = stream_encode(&f);
        assert!(enc.len() <= MAX_ENCODED_LEN);
        assert_eq!(enc.iter().position(|&b| b == 0), Some(enc.len() - 1));
        let mut d = Deframer::new();
        let got = deframe(&mut d, &enc, &[usize::MAX]);
        if f.is_empty() {
            // An empty frame encodes as 0x01 0x00, a non-empty chunk that decodes to nothing.
            assert_eq!(got, [Ok(vec![])]);
        } else {
            assert_eq!(got, [Ok(f)]);
        }
    }
}

/// The numbers on the wire (kinds, enum values) and a few whole frames, byte for byte, as
/// `docs/wire.md` gives them: round trips alone would not notice a renumbering.
#[test]
fn wire_numbers_and_golden_frames_are_pinned() {
    let kinds: Vec<(u16, &str)> = Kind::ALL.iter().map(|k| (k.to_u16(), k.name())).collect();
    assert_eq!(
        kinds,
        [
            (0x0001, "Error"),
            (0x0101, "NodeIdentity"),
            (0x0102, "NodePublicKeys"),
            (0x0103, "NodeStatus"),
            (0x0201, "LedgerIssueGrant"),
            (0x0202, "LedgerVerifyToken"),
            (0x0203, "LedgerRevoke"),
            (0x0204, "LedgerIngestRecords"),
            (0x0205, "LedgerHeads"),
            (0x0206, "LedgerRecordsLacking"),
            (0x0207, "LedgerSummary"),
            (0x0208, "LedgerRoots"),
            (0x0209, "LedgerMembers"),
            (0x020A, "LedgerEndorse"),
            (0x020B, "LedgerVerifyEndorsed"),
            (0x0301, "LenderPoolStatus"),
            (0x0302, "LenderReserve"),
            (0x0303, "LenderCommitLease"),
            (0x0304, "LenderRelease"),
            (0x0401, "AttestSignRootHash"),
            (0x0402, "AttestSignReport"),
            (0x0501, "PairBegin"),
            (0x0502, "PairStep"),
            (0x0503, "PairDecide"),
        ]
    );
    use ErrorCode as E;
    for (n, c) in [(1, E::BadFrame), (2, E::NotImplemented), (3, E::Rejected), (4, E::Internal), (5, E::Busy)] {
        assert_eq!((u16::from(c), E::from(n)), (n, c));
    }
    assert_eq!(E::from(0), E::Unknown(0));
    fn pinned<T: From<u8> + Into<u8> + Copy + PartialEq + core::fmt::Debug>(known: &[T]) {
        for (i, &v) in known.iter().enumerate() {
            assert_eq!((v.into(), T::from(i as u8 + 1)), (i as u8 + 1, v));
        }
        assert_ne!(T::from(0), known[0]);
        assert_eq!(T::from(0).into(), 0);
    }
    pinned(&[Platform::Hosted, Platform::Sel4Microkit]);
    pinned(&[ServiceState::Ready, ServiceState::NotImplemented]);
    pinned(&[ResourceType::Memory, ResourceType::Vm, ResourceType::Image, ResourceType::Mesh]);
    use Verdict as V;
    pinned(&[
        V::Valid,
        V::Malformed,
        V::BadTag,
        V::Expired,
        V::IssuerRevoked,
        V::GranteeRevoked,
        V::GrantRevoked,
        V::UnknownIssuer,
        V::BadEndorsement,
    ]);
    use IngestOutcome as O;
    pinned(&[
        O::Accepted,
        O::Duplicate,
        O::Pending,
        O::Malformed,
        O::BadSignature,
        O::UnknownAuthor,
        O::RevokedAuthor,
        O::PendingFull,
    ]);

    let golden = |msg: Msg, id: u32, want: &[u8]| {
        let frame = msg.to_frame(id);
        assert_eq!(frame, want, "{msg:?}");
        assert_eq!(msg.decode_like(want), Ok((id, msg)));
    };
    golden(
        Msg::Req(Request::Node(NodeRequest::Status)),
        0x0102_0304,
        &[b'P', b'P', b'N', b'W', 1, 0x00, 0x03, 0x01, 0x04, 0x03, 0x02, 0x01, 0, 0, 0, 0],
    );
    golden(
        Msg::Resp(Response::error(ErrorCode::BadFrame, "hi")),
        7,
        &[b'P', b'P', b'N', b'W', 1, 0x01, 0x01, 0x00, 7, 0, 0, 0, 4, 0, 0, 0, 0x01, 0x02, b'h', b'i'],
    );
    let issuer = NodeId(ByteArray([1, 2, 3, 4, 5, 6, 7, 8]));
    golden(
        Msg::Req(Request::Ledger(LedgerRequest::Revoke(Revoke {
            target: RevokeTarget::GrantRange { issuer, first: 300, last: 0 },
        }))),
        1,
        &[
            b'P', b'P', b'N', b'W', 1, 0, 0x03, 0x02, 1, 0, 0, 0, 12, 0, 0, 0, // header
            0x02, 1, 2, 3, 4, 5, 6, 7, 8, 0xAC, 0x02, 0x00, // variant 2, issuer, 300, 0
        ],
    );
    golden(
        Msg::Req(Request::Lender(LenderRequest::Reserve(Reserve { borrower: issuer, blocks: 128, expires_unix_s: 1 }))),
        2,
        &[
            b'P', b'P', b'N', b'W', 1, 0, 0x02, 0x03, 2, 0, 0, 0, 11, 0, 0, 0, // header
            1, 2, 3, 4, 5, 6, 7, 8, 0x80, 0x01, 0x01, // borrower, 128, 1
        ],
    );
    let mut keys = vec![b'P', b'P', b'N', b'W', 1, 1, 0x02, 0x01, 3, 0, 0, 0, 41, 0, 0, 0];
    keys.extend([0xAA; 8]);
    keys.extend([0x11; 32]);
    keys.push(0x00);
    golden(
        Msg::Resp(Response::Node(NodeResponse::PublicKeys(NodePublicKeys {
            node_id: NodeId(ByteArray([0xAA; 8])),
            signing_key: ByteArray([0x11; 32]),
            attestation_key: None,
        }))),
        3,
        &keys,
    );
    golden(
        Msg::Resp(Response::Ledger(LedgerResponse::RecordsLacking(Records {
            records: [Record::from_slice(&[1, 2, 3]).unwrap()].into_iter().collect(),
            more: true,
        }))),
        4,
        &[b'P', b'P', b'N', b'W', 1, 1, 0x06, 0x02, 4, 0, 0, 0, 6, 0, 0, 0, 0x01, 0x03, 1, 2, 3, 0x01],
    );
    golden(
        Msg::Req(Request::Ledger(LedgerRequest::Summary)),
        5,
        &[b'P', b'P', b'N', b'W', 1, 0, 0x07, 0x02, 5, 0, 0, 0, 0, 0, 0, 0],
    );
    golden(
        Msg::Resp(Response::Ledger(LedgerResponse::Summary(LedgerSummary {
            record_count: 300,
            heads: 1,
            pending: 0,
            pending_dropped: 0,
            root_count: 2,
            admitted_count: 1,
            revoked_node_count: 1,
            revoked_nodes: [issuer].into_iter().collect(),
            revoked_grant_ranges: 0,
            next_sequence: 1024,
        }))),
        6,
        &[
            b'P', b'P', b'N', b'W', 1, 1, 0x07, 0x02, 6, 0, 0, 0, 20, 0, 0, 0, // header
            0xAC, 0x02, 0x01, 0x00, 0x00, 0x02, 0x01, 0x01, // 300 records, 1 head, 0, 0, 2 roots, 1, 1
            0x01, 1, 2, 3, 4, 5, 6, 7, 8, // one revoked node
            0x00, 0x80, 0x08, // no grant ranges, next sequence 1024
        ],
    );
    golden(
        Msg::Req(Request::Ledger(LedgerRequest::Roots)),
        7,
        &[b'P', b'P', b'N', b'W', 1, 0, 0x08, 0x02, 7, 0, 0, 0, 0, 0, 0, 0],
    );
    let mut roots = vec![b'P', b'P', b'N', b'W', 1, 1, 0x08, 0x02, 8, 0, 0, 0, 65, 0, 0, 0, 0x02];
    roots.extend([0x11; 32]);
    roots.extend([0x22; 32]);
    golden(
        Msg::Resp(Response::Ledger(LedgerResponse::Roots(RootSet {
            keys: [ByteArray([0x11; 32]), ByteArray([0x22; 32])].into_iter().collect(),
        }))),
        8,
        &roots,
    );
}

/// The COBS layer is not canonical in one place: after a full block (code `0xFF`, 254 bytes) at
/// the end of a chunk, the decoder also accepts a redundant final code `0x01`, which the encoder
/// never writes. Both chunks decode to the same frame, so this costs nothing but a byte; it is why
/// canonical re-encoding is asserted for frames, not for stream chunks.
#[test]
fn cobs_accepts_a_redundant_code_after_a_full_block() {
    let frame = vec![0x42u8; 254];
    let enc = stream_encode(&frame);
    assert_eq!(enc.len(), 256);
    assert_eq!((enc[0], enc[255]), (0xFF, 0x00));
    let mut redundant = enc[..255].to_vec();
    redundant.extend_from_slice(&[0x01, 0x00]);
    let mut d = Deframer::new();
    assert_eq!(deframe(&mut d, &enc, &[usize::MAX]), [Ok(frame.clone())]);
    assert_eq!(deframe(&mut d, &redundant, &[usize::MAX]), [Ok(frame)]);
    // A code that points past the chunk's end is BadCobs, and the next chunk is read afresh.
    assert_eq!(deframe(&mut d, &[0x03, 0x01, 0x00, 0x02, 0x07, 0x00], &[1]), [Err(Error::BadCobs), Ok(vec![7])]);
}

// =============================================================================================
// Properties

proptest! {
    #![proptest_config(ProptestConfig::default())]

    #[test]
    fn request_round_trips(id in any::<u32>(), req in request(Fill::Typical)) {
        let msg = Msg::Req(req.clone());
        let frame = msg.to_frame(id);
        let kind = req.kind();
        prop_assert_eq!(
            Header::parse(&frame),
            Ok(Header { response: false, kind, request_id: id, body_len: (frame.len() - HEADER_LEN) as u32 })
        );
        prop_assert_eq!(decode_request(&frame), Ok((id, req)));
        prop_assert_eq!(decode_response(&frame), Err(Error::WrongDirection { kind: kind.to_u16(), got: "request" }));
        prop_assert_eq!(fuzz_decode(&frame), Ok(()));
        // Encoding needs exactly the frame's length.
        let mut exact = vec![0u8; frame.len()];
        prop_assert_eq!(msg.encode(id, &mut exact), Ok(frame.len()));
        prop_assert_eq!(&exact, &frame);
        prop_assert_eq!(msg.encode(id, &mut exact[..frame.len() - 1]), Err(Error::BufferTooSmall));
    }

    #[test]
    fn response_round_trips(id in any::<u32>(), resp in response(Fill::Typical)) {
        let msg = Msg::Resp(resp.clone());
        let frame = msg.to_frame(id);
        let kind = resp.kind();
        prop_assert_eq!(
            Header::parse(&frame),
            Ok(Header { response: true, kind, request_id: id, body_len: (frame.len() - HEADER_LEN) as u32 })
        );
        prop_assert_eq!(decode_response(&frame), Ok((id, resp)));
        prop_assert_eq!(decode_request(&frame), Err(Error::WrongDirection { kind: kind.to_u16(), got: "response" }));
        prop_assert_eq!(fuzz_decode(&frame), Err(Error::WrongDirection { kind: kind.to_u16(), got: "response" }));
        let mut exact = vec![0u8; frame.len()];
        prop_assert_eq!(msg.encode(id, &mut exact), Ok(frame.len()));
        prop_assert_eq!(&exact, &frame);
        prop_assert_eq!(msg.encode(id, &mut exact[..frame.len() - 1]), Err(Error::BufferTooSmall));
    }

    /// A sequence of frames on a stream, behind garbage and with empty chunks between them, fed in
    /// arbitrary pieces, comes out as the same frames and messages.
    #[test]
    fn stream_round_trips(
        msgs in vec((any::<u32>(), message(Fill::Typical)), 1..6),
        garbage in vec(1u8..=255, 0..64),
        gaps in vec(0usize..3, 6),
        pieces in vec(prop_oneof![1usize..8, 1usize..4096], 1..8),
    ) {
        let mut wire = garbage.clone();
        wire.push(0);
        let mut frames = Vec::new();
        for (i, (id, msg)) in msgs.iter().enumerate() {
            let frame = msg.to_frame(*id);
            wire.extend(stream_encode(&frame));
            wire.extend(std::iter::repeat_n(0u8, gaps[i]));
            frames.push(frame);
        }
        let mut d = Deframer::new();
        let mut events = deframe(&mut d, &wire, &pieces);
        prop_assert_eq!(d.pending(), 0);
        // Garbage without a zero is one chunk, so one event; an empty one is none.
        if !garbage.is_empty() {
            prop_assert!(!events.is_empty());
            let _garbage = events.remove(0);
        }
        prop_assert_eq!(events.len(), msgs.len());
        for ((event, frame), (id, msg)) in events.iter().zip(&frames).zip(&msgs) {
            let got = event.as_ref().map_err(|e| TestCaseError::fail(format!("{e:?}")))?;
            prop_assert_eq!(got, frame);
            prop_assert_eq!(msg.decode_like(got), Ok((*id, msg.clone())));
        }
    }

    /// Arbitrary byte strings: never a panic, and the decoders agree with each other.
    #[test]
    fn hostile_bytes_never_panic(data in hostile_bytes(), pieces in vec(1usize..512, 1..4)) {
        check_any_bytes(&data, &pieces);
    }

    /// Valid frames and their stream encodings, mutated: flipped and inserted bytes, truncations,
    /// removals, extended lengths.
    #[test]
    fn mutated_frames_never_panic(
        id in any::<u32>(),
        msg in message(Fill::Typical),
        muts in vec(mutation(), 1..4),
    ) {
        let frame = msg.to_frame(id);
        let mut m = frame.clone();
        for mu in &muts {
            mu.apply(&mut m);
        }
        check_any_bytes(&m, &[usize::MAX]);
        let mut s = stream_encode(&frame);
        for mu in &muts {
            mu.apply(&mut s);
        }
        check_any_bytes(&s, &[usize::MAX]);
        // A lone flip in the magic is always BadMagic, whatever else the frame holds.
        if let [Mutation::Flip(at, _)] = muts[..]
            && at.index(frame.len()) < MAGIC.len()
        {
            prop_assert!(matches!(msg.decode_like(&m), Err(Error::BadMagic(_))));
        }
    }

    /// Truncating a frame anywhere gives `Truncated` with what the header (or its absence) needs.
    #[test]
    fn truncated_frames(id in any::<u32>(), msg in message(Fill::Typical), cut in any::<Index>()) {
        let frame = msg.to_frame(id);
        let cut = cut.index(frame.len());
        let need = if cut < HEADER_LEN { HEADER_LEN } else { frame.len() };
        prop_assert_eq!(msg.decode_like(&frame[..cut]), Err(Error::Truncated { need, have: cut }));
        prop_assert_eq!(msg.decode_opposite(&frame[..cut]), Err(Error::Truncated { need, have: cut }));
    }

    /// A body length that disagrees with the bytes present: longer is `Truncated` (or `TooLong`
    /// past the limit, checked first), shorter is `TrailingFrameBytes`; bytes after the frame are
    /// `TrailingFrameBytes` too.
    #[test]
    fn wrong_body_lengths(
        id in any::<u32>(),
        msg in message(Fill::Typical),
        len in prop_oneof![any::<u32>(), 0u32..=(MAX_BODY_LEN as u32 + 2)],
        extra in vec(any::<u8>(), 1..32),
    ) {
        let frame = msg.to_frame(id);
        let body = (frame.len() - HEADER_LEN) as u32;
        let mut m = frame.clone();
        set_body_len(&mut m, len);
        let expected = if len as usize > MAX_BODY_LEN {
            Err(Error::TooLong(len))
        } else if len > body {
            Err(Error::Truncated { need: HEADER_LEN + len as usize, have: frame.len() })
        } else if len < body {
            Err(Error::TrailingFrameBytes { extra: (body - len) as usize })
        } else {
            Ok((id, msg.clone()))
        };
        prop_assert_eq!(msg.decode_like(&m), expected.clone());
        if len as usize > MAX_BODY_LEN {
            prop_assert_eq!(Header::parse(&m), Err(Error::TooLong(len)));
        }

        let mut longer = frame.clone();
        longer.extend_from_slice(&extra);
        prop_assert_eq!(msg.decode_like(&longer), Err(Error::TrailingFrameBytes { extra: extra.len() }));
    }

    /// Bytes after a complete body, inside the body length, are `TrailingBodyBytes`.
    #[test]
    fn trailing_body_bytes(id in any::<u32>(), msg in message(Fill::Typical), extra in vec(any::<u8>(), 1..64)) {
        let mut m = msg.to_frame(id);
        m.extend_from_slice(&extra);
        prop_assume!(m.len() <= MAX_FRAME_LEN);
        let body_len = (m.len() - HEADER_LEN) as u32;
        set_body_len(&mut m, body_len);
        let kind = msg.kind().to_u16();
        prop_assert_eq!(msg.decode_like(&m), Err(Error::TrailingBodyBytes { kind, extra: extra.len() }));
    }

    /// The response flag decides the direction, whatever the kind: a flipped flag is
    /// `WrongDirection` in the original direction; in the other direction it decodes (if the body
    /// fits that direction's type) or fails on the body, except that an error frame is never a
    /// request.
    #[test]
    fn flipped_direction(id in any::<u32>(), msg in message(Fill::Typical)) {
        let mut m = msg.to_frame(id);
        m[5] ^= FLAG_RESPONSE;
        let kind = msg.kind().to_u16();
        let got = if msg.is_response() { "request" } else { "response" };
        prop_assert_eq!(msg.decode_like(&m), Err(Error::WrongDirection { kind, got }));
        let other = msg.decode_opposite(&m);
        if msg.kind() == Kind::Error {
            prop_assert_eq!(other, Err(Error::WrongDirection { kind, got: "request" }));
        } else {
            prop_assert!(
                matches!(other, Ok(_) | Err(Error::MalformedBody(_) | Error::TrailingBodyBytes { .. })),
                "{:?}", other
            );
        }
    }

    /// A kind number this build does not know is `UnknownKind` in the frame's direction (and
    /// `WrongDirection` in the other: direction is checked before kind).
    #[test]
    fn unknown_kinds(
        id in any::<u32>(),
        response in any::<bool>(),
        kind in any::<u16>().prop_filter("unknown", |k| matches!(Kind::from_u16(*k), Kind::Unknown(_))),
        body in vec(any::<u8>(), 0..64),
    ) {
        let mut m = raw_header(if response { FLAG_RESPONSE } else { 0 }, kind, id, body.len() as u32);
        m.extend_from_slice(&body);
        let (right, wrong) = if response {
            (decode_response(&m).map(drop), decode_request(&m).map(drop))
        } else {
            (decode_request(&m).map(drop), decode_response(&m).map(drop))
        };
        prop_assert_eq!(right, Err(Error::UnknownKind(kind)));
        let got = if response { "response" } else { "request" };
        prop_assert_eq!(wrong, Err(Error::WrongDirection { kind, got }));
        prop_assert_eq!(Header::parse(&m).map(|h| h.kind), Ok(Kind::Unknown(kind)));
    }
}

proptest! {
    // Each case here is a dozen KiB of random content; fewer cases keep debug runs fast.
    #![proptest_config(ProptestConfig { cases: 32, ..ProptestConfig::default() })]

    /// Every message at maximum size, with random content: it fits a `MAX_FRAME_LEN` buffer, has
    /// exactly its documented size, and round-trips bare and on a stream.
    #[test]
    fn max_size_messages_fit_and_round_trip(id in any::<u32>(), msg in message(Fill::Max)) {
        let mut out = vec![0u8; MAX_FRAME_LEN];
        let n = msg.encode(id, &mut out).map_err(|e| TestCaseError::fail(format!("{e}")))?;
        prop_assert_eq!(n - HEADER_LEN, max_body(msg.kind(), msg.is_response()));
        prop_assert_eq!(msg.decode_like(&out[..n]), Ok((id, msg.clone())));
        let enc = stream_encode(&out[..n]);
        let mut d = Deframer::new();
        prop_assert_eq!(deframe(&mut d, &enc, &[4096]), vec![Ok(out[..n].to_vec())]);
    }

    /// Any frame-sized byte string survives the stream layer unchanged and fits
    /// `MAX_ENCODED_LEN`: runs of non-zero bytes of every length around COBS's 254-byte block,
    /// separated by zeros, up to `MAX_FRAME_LEN` bytes in all.
    #[test]
    fn any_frame_bytes_survive_the_stream(
        runs in vec((0usize..=600, 1u8..=255, any::<bool>()), 0..64),
        pieces in vec(1usize..2048, 1..4),
    ) {
        let mut frame = Vec::new();
        for (len, byte, zero) in runs {
            frame.extend(std::iter::repeat_n(byte, len));
            if zero {
                frame.push(0);
            }
        }
        frame.truncate(MAX_FRAME_LEN);
        let enc = stream_encode(&frame);
        prop_assert!(enc.len() <= MAX_ENCODED_LEN);
        prop_assert_eq!(enc.iter().position(|&b| b == 0), Some(enc.len() - 1));
        let mut d = Deframer::new();
        prop_assert_eq!(deframe(&mut d, &enc, &pieces), vec![Ok(frame)]);
    }
}

#[derive(Debug, Clone, Copy)]
enum Mutation {
    Flip(Index, u8),
    Truncate(Index),
    Remove(Index),
    Insert(Index, u8),
    Append(u8, u8),
    BodyLen(u32),
}

impl Mutation {
    fn apply(self, b: &mut Vec<u8>) {
        if b.is_empty() {
            return;
        }
        match self {
            Mutation::Flip(at, x) => {
                let at = at.index(b.len());
                b[at] ^= x;
            }
            Mutation::Truncate(at) => b.truncate(at.index(b.len())),
            Mutation::Remove(at) => {
                b.remove(at.index(b.len()));
            }
            Mutation::Insert(at, x) => b.insert(at.index(b.len() + 1), x),
            Mutation::Append(x, n) => b.extend(std::iter::repeat_n(x, n as usize)),
            Mutation::BodyLen(len) => {
                if b.len() >= HEADER_LEN {
                    set_body_len(b, len)
                }
            }
        }
    }
}

fn mutation() -> impl Strategy<Value = Mutation> {
    prop_oneof![
        3 => (any::<Index>(), 1u8..=255).prop_map(|(i, x)| Mutation::Flip(i, x)),
        1 => any::<Index>().prop_map(Mutation::Truncate),
        1 => any::<Index>().prop_map(Mutation::Remove),
        1 => (any::<Index>(), any::<u8>()).prop_map(|(i, x)| Mutation::Insert(i, x)),
        1 => (any::<u8>(), any::<u8>()).prop_map(|(x, n)| Mutation::Append(x, n)),
        1 => prop_oneof![any::<u32>(), 0u32..=(MAX_BODY_LEN as u32 + 1)].prop_map(Mutation::BodyLen),
    ]
}
