//! Message kinds and the services that own them.
//!
//! A kind is a `u16`: the high byte names the [`Service`], the low byte the operation. A request
//! and its response share the kind; the frame's response flag tells them apart. The one exception
//! is [`Kind::Error`], which only ever appears in responses and may answer any request.

/// The TCB service that owns a kind. On seL4 each service is its own protection domain and the
/// `link` PD routes a request by this alone, before decoding its body.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum Service {
    /// Link-level messages (errors).
    Link,
    /// Node identity, public keys, status.
    Node,
    /// Capability ledger: grants, tokens, revocations, record sync.
    Ledger,
    /// Memory lender: pool, reservations, leases.
    Lender,
    /// Attestation: root-hash and report signatures.
    Attest,
    /// Pairing: the CPace ceremony that admits another node.
    Pair,
    /// A service byte this build does not know.
    Unknown(u8),
}

impl Service {
    pub const ALL: [Service; 5] = [Service::Node, Service::Ledger, Service::Lender, Service::Attest, Service::Pair];

    pub fn from_u8(v: u8) -> Self {
        match v {
            0x00 => Self::Link,
            0x01 => Self::Node,
            0x02 => Self::Ledger,
            0x03 => Self::Lender,
            0x04 => Self::Attest,
            0x05 => Self::Pair,
            n => Self::Unknown(n),
        }
    }

    pub fn to_u8(self) -> u8 {
        match self {
            Self::Link => 0x00,
            Self::Node => 0x01,
            Self::Ledger => 0x02,
            Self::Lender => 0x03,
            Self::Attest => 0x04,
            Self::Pair => 0x05,
            Self::Unknown(n) => n,
        }
    }

    pub fn name(self) -> &'static str {
        match self {
            Self::Link => "link",
            Self::Node => "node",
            Self::Ledger => "ledger",
            Self::Lender => "lender",
            Self::Attest => "attest",
            Self::Pair => "pair",
            Self::Unknown(_) => "unknown",
        }
    }
}

macro_rules! kinds {
    ($( $(#[$doc:meta])* $name:ident = $val:literal, )*) => {
        /// A message kind. Unknown numbers are kept as [`Kind::Unknown`], never a panic.
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
        pub enum Kind {
            $( $(#[$doc])* $name, )*
            /// A kind number this build does not know.
            Unknown(u16),
        }

        impl Kind {
            /// Every known kind.
            pub const ALL: &'static [Kind] = &[$(Kind::$name,)*];

            pub fn from_u16(v: u16) -> Self {
                match v {
                    $( $val => Self::$name, )*
                    n => Self::Unknown(n),
                }
            }

            pub fn to_u16(self) -> u16 {
                match self {
                    $( Self::$name => $val, )*
                    Self::Unknown(n) => n,
                }
            }

            /// The kind's name as `docs/wire.md` spells it.
            pub fn name(self) -> &'static str {
                match self {
                    $( Self::$name => stringify!($name), )*
                    Self::Unknown(_) => "Unknown",
                }
            }
        }
    };
}

kinds! {
    /// Response only: the request could not be served.
    Error = 0x0001,

    /// Node identity: node id and the TCB's platform.
    NodeIdentity = 0x0101,
    /// The node's public keys.
    NodePublicKeys = 0x0102,
    /// TCB status: version, uptime, counters, services.
    NodeStatus = 0x0103,

    /// Issue a capability token for a grantee.
    LedgerIssueGrant = 0x0201,
    /// Verify a capability token.
    LedgerVerifyToken = 0x0202,
    /// Revoke a node, a grant, or a range of grants.
    LedgerRevoke = 0x0203,
    /// Ingest signed ledger records relayed from peers.
    LedgerIngestRecords = 0x0204,
    /// The ledger's current heads.
    LedgerHeads = 0x0205,
    /// Records a peer lacks, given the peer's heads.
    LedgerRecordsLacking = 0x0206,
    /// Ledger summary for operators: counts, revoked nodes.
    LedgerSummary = 0x0207,
    /// The fleet root set.
    LedgerRoots = 0x0208,
    /// The fleet's members: roots and admitted nodes, their keys and trust.
    LedgerMembers = 0x0209,
    /// Sign a token this node issued, so that nodes without its grant key can check it.
    LedgerEndorse = 0x020A,
    /// Check a token another node issued, by its endorsement (Ed25519 signature).
    LedgerVerifyEndorsed = 0x020B,

    /// The lendable memory pool's state.
    LenderPoolStatus = 0x0301,
    /// Reserve blocks for a borrower.
    LenderReserve = 0x0302,
    /// Turn a reservation into a lease bound to a capability token.
    LenderCommitLease = 0x0303,
    /// End a lease: scrub and free its blocks.
    LenderRelease = 0x0304,

    /// Sign a guest image's dm-verity root hash.
    AttestSignRootHash = 0x0401,
    /// Sign an attestation report for a guest.
    AttestSignReport = 0x0402,

    /// Start a pairing session as initiator or responder.
    PairBegin = 0x0501,
    /// Hand the session the peer's next pairing message.
    PairStep = 0x0502,
    /// The operator's verdict on a paired peer: admit it (or not).
    PairDecide = 0x0503,
}

impl Kind {
    /// The service that owns this kind (the high byte).
    pub fn service(self) -> Service {
        Service::from_u8((self.to_u16() >> 8) as u8)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn kind_numbers_round_trip_and_are_unique() {
        for (i, k) in Kind::ALL.iter().enumerate() {
            assert_eq!(Kind::from_u16(k.to_u16()), *k);
            assert!(!matches!(k.service(), Service::Unknown(_)), "{k:?} has no service");
            for other in &Kind::ALL[i + 1..] {
                assert_ne!(k.to_u16(), other.to_u16());
            }
        }
        assert_eq!(Kind::from_u16(0x7777), Kind::Unknown(0x7777));
        assert_eq!(Kind::Unknown(0x7777).service(), Service::Unknown(0x77));
    }

    #[test]
    fn every_service_owns_a_kind() {
        for s in Service::ALL {
            assert!(Kind::ALL.iter().any(|k| k.service() == s), "{s:?} has no kinds");
            assert_eq!(Service::from_u8(s.to_u8()), s);
        }
    }
}
