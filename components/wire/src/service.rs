//! Message bodies, by service. Every variable-length field has a fixed capacity, so a decoded
//! message never allocates and never exceeds [`crate::MAX_BODY_LEN`] (a test checks each one).

use crate::{ByteArray, ErrorCode, Service};
use heapless::{String, Vec};
use serde::{Deserialize, Serialize};

/// Longest free-text detail in an error frame, in bytes.
pub const DETAIL_MAX: usize = 128;
/// Longest TCB version string.
pub const VERSION_STRING_MAX: usize = 32;
/// Largest capability token.
pub const TOKEN_MAX: usize = 64;
/// Largest encoded ledger record.
pub const RECORD_MAX: usize = 1024;
/// Most records in one ingest or records-lacking frame.
pub const RECORDS_PER_FRAME: usize = 12;
/// Most heads in one frame.
pub const HEADS_MAX: usize = 64;
/// Most ids in the known sample of a [`Heads`] answer.
pub const KNOWN_MAX: usize = 32;
/// Most ids a [`RecordsLacking`] request names.
pub const HAVE_MAX: usize = HEADS_MAX + KNOWN_MAX;
/// Most revoked node ids listed in a ledger summary.
pub const REVOKED_NODES_MAX: usize = 64;
/// Most keys in a root set answer.
pub const ROOTS_MAX: usize = 64;
/// Longest verifier nonce.
pub const NONCE_MAX: usize = 64;
/// Largest COSE_Sign1 attestation report (`ppn_attest::MAX_REPORT`).
pub const REPORT_MAX: usize = 2048;
/// Largest provisioning statement, a COSE_Sign1 (`ppn_attest::MAX_PROVISIONING`).
pub const PROVISIONING_MAX: usize = 1024;
/// Longest image or VM name in an attestation request.
pub const ATTEST_NAME_MAX: usize = 64;

/// A node's short identifier: the first 8 bytes of SHA-256 over a domain tag and the node's
/// Ed25519 public key (the ledger crate derives it). Short so that a token fits in 64 bytes.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Default, Serialize, Deserialize)]
pub struct NodeId(pub ByteArray<8>);

impl core::fmt::Display for NodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        core::fmt::LowerHex::fmt(&self.0, f)
    }
}

/// Why a string is not a node id.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NotANodeId;

impl core::fmt::Display for NotANodeId {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("a node id is 16 hex digits")
    }
}

/// Parses the form [`Display`](core::fmt::Display) prints: exactly 16 hex digits, either case.
impl core::str::FromStr for NodeId {
    type Err = NotANodeId;

    fn from_str(s: &str) -> Result<Self, NotANodeId> {
        let digits = s.as_bytes();
        if digits.len() != 16 {
            return Err(NotANodeId);
        }
        let mut id = [0u8; 8];
        for (i, b) in id.iter_mut().enumerate() {
            let digit = |c: u8| char::from(c).to_digit(16).ok_or(NotANodeId);
            *b = (digit(digits[2 * i])? * 16 + digit(digits[2 * i + 1])?) as u8;
        }
        Ok(NodeId(ByteArray(id)))
    }
}

/// An Ed25519 public key.
pub type PublicKey = ByteArray<32>;
/// An Ed25519 signature.
pub type Signature = ByteArray<64>;
/// A SHA-256 digest: a ledger record id, a dm-verity root hash.
pub type Digest = ByteArray<32>;
/// An opaque capability token (the ledger defines its layout).
pub type Token = Vec<u8, TOKEN_MAX>;
/// An opaque, signed ledger record (the ledger defines its canonical encoding).
pub type Record = Vec<u8, RECORD_MAX>;

/// Defines a `u8`-coded enum whose unknown values survive decoding as `Unknown(n)`.
macro_rules! u8_enum {
    ($(#[$m:meta])* $name:ident { $( $(#[$vm:meta])* $v:ident = $n:literal, )* }) => {
        $(#[$m])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize, Deserialize)]
        #[serde(from = "u8", into = "u8")]
        pub enum $name {
            $( $(#[$vm])* $v, )*
            /// A value from a newer build.
            Unknown(u8),
        }
        impl From<u8> for $name {
            fn from(v: u8) -> Self {
                match v { $( $n => Self::$v, )* n => Self::Unknown(n) }
            }
        }
        impl From<$name> for u8 {
            fn from(v: $name) -> u8 {
                match v { $( $name::$v => $n, )* $name::Unknown(n) => n }
            }
        }
    };
}

// ---------------------------------------------------------------------------------------------
// Link

/// Body of an error frame.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ErrorBody {
    pub code: ErrorCode,
    /// Human-readable detail, truncated to [`DETAIL_MAX`] bytes.
    pub detail: String<DETAIL_MAX>,
}

impl ErrorBody {
    /// An error body whose detail is `detail`, cut at a character boundary to fit.
    pub fn new(code: ErrorCode, detail: &str) -> Self {
        let mut end = detail.len().min(DETAIL_MAX);
        while !detail.is_char_boundary(end) {
            end -= 1;
        }
        let mut s = String::new();
        // Cannot fail: `end <= DETAIL_MAX`.
        let _ = s.push_str(&detail[..end]);
        Self { code, detail: s }
    }
}

// ---------------------------------------------------------------------------------------------
// Node

u8_enum! {
    /// What the TCB runs on.
    Platform {
        /// `ppn-tcb`, a Linux process (development and emulated fleets).
        Hosted = 1,
        /// Microkit protection domains on seL4.
        Sel4Microkit = 2,
    }
}

u8_enum! {
    /// Whether a service answers its requests in this TCB build.
    ServiceState {
        Ready = 1,
        NotImplemented = 2,
    }
}

/// Answer to [`crate::Kind::NodeIdentity`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeIdentity {
    pub node_id: NodeId,
    pub platform: Platform,
    pub tcb_version: String<VERSION_STRING_MAX>,
}

/// Answer to [`crate::Kind::NodePublicKeys`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodePublicKeys {
    pub node_id: NodeId,
    /// Ed25519 key that signs ledger records.
    pub signing_key: PublicKey,
    /// Ed25519 key that signs provisioning statements and reports; absent when this TCB does
    /// not serve attestation.
    pub attestation_key: Option<PublicKey>,
}

/// One service's state in [`NodeStatus`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct ServiceStatus {
    /// [`Service`] as its byte.
    pub service: u8,
    pub state: ServiceState,
}

impl ServiceStatus {
    pub fn service(&self) -> Service {
        Service::from_u8(self.service)
    }
}

/// Answer to [`crate::Kind::NodeStatus`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct NodeStatus {
    pub node_id: NodeId,
    pub platform: Platform,
    pub tcb_version: String<VERSION_STRING_MAX>,
    /// Milliseconds since this TCB instance started.
    pub uptime_ms: u64,
    /// How many times this node's TCB state has been opened (1 on first start).
    pub boot_count: u32,
    /// Requests answered with a non-error response since start.
    pub requests_served: u64,
    /// Frames answered with an error since start.
    pub requests_failed: u64,
    pub services: Vec<ServiceStatus, 8>,
}

// ---------------------------------------------------------------------------------------------
// Ledger

u8_enum! {
    /// What a capability grants access to.
    ResourceType {
        /// A memory lease (resource id = lease id).
        Memory = 1,
        /// A VM (resource id = VM id).
        Vm = 2,
        /// A guest image (resource id = image id).
        Image = 3,
        /// Membership of the fleet mesh.
        Mesh = 4,
    }
}

/// Request body of [`crate::Kind::LedgerIssueGrant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IssueGrant {
    pub grantee: NodeId,
    pub resource_type: ResourceType,
    pub resource_id: u64,
    /// Expiry, seconds since the Unix epoch (the TCB's clock decides).
    pub expires_unix_s: u64,
}

/// Answer to [`IssueGrant`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Grant {
    pub token: Token,
    pub sequence: u64,
}

/// Request body of [`crate::Kind::LedgerVerifyToken`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyToken {
    pub token: Token,
}

u8_enum! {
    /// The outcome of a token verification.
    Verdict {
        Valid = 1,
        /// Not a token of a known version and size.
        Malformed = 2,
        /// The tag does not check under the issuer's grant key (or this node is not the issuer).
        BadTag = 3,
        Expired = 4,
        IssuerRevoked = 5,
        GranteeRevoked = 6,
        GrantRevoked = 7,
        /// (Endorsed tokens) the issuer is not a trusted member of this node's ledger.
        UnknownIssuer = 8,
        /// (Endorsed tokens) the endorsement does not check under the issuer's signing key.
        BadEndorsement = 9,
    }
}

/// Request body of [`crate::Kind::LedgerEndorse`]: a token this node issued.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorse {
    pub token: Token,
}

/// Answer to [`Endorse`]: the issuer's Ed25519 signature over
/// `"ppn/endorse/v1" ‖ token` (docs/ledger.md §2a).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Endorsement {
    pub signature: Signature,
}

/// Request body of [`crate::Kind::LedgerVerifyEndorsed`]: a token any member issued, with its
/// issuer's endorsement. Answered with a [`TokenVerdict`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct VerifyEndorsed {
    pub token: Token,
    pub signature: Signature,
}

/// Answer to [`VerifyToken`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct TokenVerdict {
    pub verdict: Verdict,
}

/// What a revocation names.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub enum RevokeTarget {
    Node {
        node: NodeId,
    },
    Grant {
        issuer: NodeId,
        sequence: u64,
    },
    /// Every grant of `issuer` with `first <= sequence <= last`.
    GrantRange {
        issuer: NodeId,
        first: u64,
        last: u64,
    },
}

/// Request body of [`crate::Kind::LedgerRevoke`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoke {
    pub target: RevokeTarget,
}

/// Answer to [`Revoke`]: the id of the signed record the TCB appended.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Revoked {
    pub record_id: Digest,
}

/// Request body of [`crate::Kind::LedgerIngestRecords`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct IngestRecords {
    pub records: Vec<Record, RECORDS_PER_FRAME>,
}

u8_enum! {
    /// What the ledger did with one ingested record.
    IngestOutcome {
        Accepted = 1,
        Duplicate = 2,
        /// Parents missing: held in the bounded pending buffer.
        Pending = 3,
        Malformed = 4,
        BadSignature = 5,
        UnknownAuthor = 6,
        RevokedAuthor = 7,
        /// Reserved. The ledger drops the oldest held record when its buffer is full and answers
        /// `Pending`; this value is kept so the number is never reused.
        PendingFull = 8,
    }
}

/// Answer to [`IngestRecords`]: one outcome per record, in order.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Ingested {
    pub outcomes: Vec<IngestOutcome, RECORDS_PER_FRAME>,
}

/// Answer to [`crate::Kind::LedgerHeads`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Heads {
    pub heads: Vec<Digest, HEADS_MAX>,
    /// Older records this replica holds, exponentially spaced back from the newest in
    /// acceptance order (the 2nd, 3rd, 5th, 9th, ... newest), heads excluded. Sent along with
    /// the heads so a peer that does not know the heads still finds the common history.
    pub known: Vec<Digest, KNOWN_MAX>,
    pub record_count: u64,
}

impl Heads {
    /// What to send as [`RecordsLacking::peer_heads`]: the heads, then `extra` (ids of records
    /// this replica turned out to hold already, newest first), then the known sample; no
    /// duplicates, at most [`HAVE_MAX`].
    pub fn have(&self, extra: &[Digest]) -> Vec<Digest, HAVE_MAX> {
        let mut out: Vec<Digest, HAVE_MAX> = Vec::new();
        for id in self.heads.iter().chain(extra).chain(self.known.iter()) {
            if !out.contains(id) && out.push(*id).is_err() {
                break;
            }
        }
        out
    }
}

/// Request body of [`crate::Kind::LedgerRecordsLacking`]: "I hold these records (and their
/// ancestors); send me what I lack", at most `limit` records per answer. Ids the answering
/// replica does not know are ignored.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RecordsLacking {
    pub peer_heads: Vec<Digest, HAVE_MAX>,
    pub limit: u16,
}

/// Answer to [`RecordsLacking`], parents before children.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Records {
    pub records: Vec<Record, RECORDS_PER_FRAME>,
    /// More records are lacking; ask again with the new heads.
    pub more: bool,
}

/// Answer to [`crate::Kind::LedgerSummary`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct LedgerSummary {
    pub record_count: u64,
    pub heads: u32,
    /// Records held until their parents arrive.
    pub pending: u32,
    /// Held records dropped, oldest first, to make room (since start).
    pub pending_dropped: u64,
    pub root_count: u32,
    /// Nodes admitted by a NodeAdmitted record.
    pub admitted_count: u32,
    pub revoked_node_count: u32,
    /// The first [`REVOKED_NODES_MAX`] revoked nodes, ascending.
    pub revoked_nodes: Vec<NodeId, REVOKED_NODES_MAX>,
    /// Disjoint revoked grant ranges over all issuers.
    pub revoked_grant_ranges: u32,
    /// The sequence number the next grant gets.
    pub next_sequence: u64,
}

/// Most members a [`Members`] answer lists.
pub const MEMBERS_MAX: usize = 128;

/// One node of the fleet, as a TCB's ledger sees it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Member {
    pub node_id: NodeId,
    pub signing_key: PublicKey,
    /// Its proxy's mesh (WireGuard) public key, from its newest valid admission; none for a
    /// root that no record admits.
    pub wireguard: Option<ByteArray<32>>,
    /// In the fleet root set.
    pub root: bool,
    /// Trusted now: a root or validly admitted, and not revoked.
    pub trusted: bool,
}

/// Answer to [`crate::Kind::LedgerMembers`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Members {
    pub members: Vec<Member, MEMBERS_MAX>,
}

/// Answer to [`crate::Kind::LedgerRoots`]: the fleet root set's Ed25519 keys.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct RootSet {
    pub keys: Vec<PublicKey, ROOTS_MAX>,
}

// ---------------------------------------------------------------------------------------------
// Lender

/// Answer to [`crate::Kind::LenderPoolStatus`]: every block is in exactly one state.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Pool {
    pub block_bytes: u32,
    pub total: u32,
    pub free: u32,
    pub reserved: u32,
    pub lent: u32,
    pub in_use: u32,
}

/// Request body of [`crate::Kind::LenderReserve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reserve {
    pub borrower: NodeId,
    pub blocks: u32,
    pub expires_unix_s: u64,
}

/// Answer to [`Reserve`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Reservation {
    pub reservation_id: u64,
    pub blocks: u32,
}

/// Request body of [`crate::Kind::LenderCommitLease`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct CommitLease {
    pub reservation_id: u64,
}

/// Answer to [`CommitLease`]: the lease and its capability token for the borrower.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Lease {
    pub lease_id: u64,
    pub token: Token,
}

/// Request body of [`crate::Kind::LenderRelease`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Release {
    pub lease_id: u64,
}

/// Answer to [`Release`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Released {
    pub blocks: u32,
    /// The blocks were scrubbed before they became free again.
    pub scrubbed: bool,
}

// ---------------------------------------------------------------------------------------------
// Attest

/// Request body of [`crate::Kind::AttestSignRootHash`]: sign a provisioning statement for a
/// sealed guest image (`ppn_attest::Provisioning`; dm-verity with sha256, 4096-byte blocks).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignRootHash {
    /// The image's name (1 to 64 bytes).
    pub image: String<ATTEST_NAME_MAX>,
    /// The dm-verity root hash.
    pub root_hash: Digest,
    /// The hash tree's salt.
    pub salt: Digest,
    /// 4096-byte data blocks the tree covers.
    pub data_blocks: u64,
    /// Byte offset of the verity superblock in the image.
    pub hash_offset: u64,
}

/// Answer to [`SignRootHash`]: the provisioning statement, a COSE_Sign1 by the attestation key.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ProvisioningStatement {
    pub statement: Vec<u8, PROVISIONING_MAX>,
}

/// Request body of [`crate::Kind::AttestSignReport`].
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct SignReport {
    /// The VM's name on this node (1 to 64 bytes).
    pub vm: String<ATTEST_NAME_MAX>,
    /// The dm-verity root hash the VM booted with.
    pub root_hash: Digest,
    /// The image's provisioning statement, whole.
    pub provisioning: Vec<u8, PROVISIONING_MAX>,
    /// The verifier's nonce (8 to 64 bytes).
    pub nonce: Vec<u8, NONCE_MAX>,
}

/// Answer to [`SignReport`]: an EAT in COSE_Sign1.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Report {
    pub cose_sign1: Vec<u8, REPORT_MAX>,
}

// ---------------------------------------------------------------------------------------------
// Pair

/// Longest pairing code, as typed (dashes and spaces included).
pub const PAIR_CODE_MAX: usize = 32;
/// Longest pairing message (Hello and Reply; `ppn_pairing::message::MAX_MESSAGE_LEN`).
pub const PAIR_MESSAGE_MAX: usize = 144;

u8_enum! {
    /// Which side of the ceremony this TCB plays.
    PairRole {
        /// Sends Hello first (`ppn pair --connect`).
        Initiator = 1,
        /// Answers Hello (`ppn pair --listen`).
        Responder = 2,
    }
}

/// Request body of [`crate::Kind::PairBegin`]: starts a session, replacing any earlier one.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairBegin {
    pub role: PairRole,
    /// The one-time code the operator typed, as typed.
    pub code: String<PAIR_CODE_MAX>,
    /// This node's proxy's mesh (WireGuard) public key, which the peer key-confirms.
    pub wireguard_key: ByteArray<32>,
}

/// Request body of [`crate::Kind::PairStep`]: the peer's next message, as received.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairStep {
    pub message: Vec<u8, PAIR_MESSAGE_MAX>,
}

/// A peer whose identity the ceremony key-confirmed, waiting for the operator's verdict.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairedPeer {
    pub node_id: NodeId,
    pub signing_key: PublicKey,
    pub wireguard_key: ByteArray<32>,
    /// The short authentication string (6 decimal digits) both operators compare.
    pub sas: u32,
}

/// Answer to [`PairBegin`] and [`PairStep`]: the message to send the peer next (empty when
/// there is none), and the peer once the ceremony has confirmed it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairProgress {
    pub message: Vec<u8, PAIR_MESSAGE_MAX>,
    pub paired: Option<PairedPeer>,
}

/// Request body of [`crate::Kind::PairDecide`]: the operator compared the SAS.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDecide {
    /// The peer and SAS the operator saw, echoed so a verdict cannot apply to another session.
    pub peer: NodeId,
    pub sas: u32,
    pub admit: bool,
    /// The peer's own admission record of this node, when the peer decided first (empty
    /// otherwise): ingested before this node signs its own, so that this node's record descends
    /// from its admission and the whole fleet accepts it.
    pub peer_record: Record,
}

/// Answer to [`PairDecide`]: the NodeAdmitted record this node signed, when admitted (its id
/// and bytes, for the peer).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct PairDecided {
    pub record_id: Option<Digest>,
    pub record: Record,
}
