//! The node service of the TCB: the node's identity keys, its node id, and its status.
//!
//! The keys derive from one 32-byte seed that the platform draws from a hardware entropy source
//! at first start and keeps in the node journal ([`NodeRecord::Identity`]). The seed never leaves
//! the TCB; only public keys and the node id do.
#![no_std]
#![forbid(unsafe_code)]

use ed25519_dalek::SigningKey;
use ppn_wire::message::{NodeRequest, NodeResponse};
use ppn_wire::service::{NodeIdentity, NodePublicKeys, NodeStatus, Platform, ServiceStatus, VERSION_STRING_MAX};
use ppn_wire::{ByteArray, service::NodeId};
use sha2::{Digest, Sha256, Sha512};
use zeroize::{Zeroize, Zeroizing};

/// Domain tag of the node id hash.
const NODE_ID_TAG: &[u8] = b"ppn/node-id/v1";
/// Domain tags of the keys derived from the seed.
const SIGNING_KEY_TAG: &[u8] = b"ppn/node-signing-key/v1";
const GRANT_KEY_TAG: &[u8] = b"ppn/grant-key/v1";
const ATTEST_KEY_TAG: &[u8] = b"ppn/attest-key/v1";

/// The node id of an Ed25519 public key: SHA-256(tag || key), first 8 bytes.
pub fn node_id_of(signing_key: &[u8; 32]) -> NodeId {
    let digest = Sha256::new().chain_update(NODE_ID_TAG).chain_update(signing_key).finalize();
    let mut id = [0u8; 8];
    id.copy_from_slice(&digest[..8]);
    NodeId(ByteArray(id))
}

fn derive(seed: &[u8; 32], tag: &[u8]) -> Zeroizing<[u8; 32]> {
    let mut digest = Sha512::new().chain_update(tag).chain_update(seed).finalize();
    let mut out = Zeroizing::new([0u8; 32]);
    out.copy_from_slice(&digest[..32]);
    digest.as_mut_slice().zeroize();
    out
}

/// The node's secret keys. Not `Clone`: there is one copy, in the TCB.
pub struct NodeKeys {
    signing: SigningKey,
    grant_key: Zeroizing<[u8; 32]>,
    attest_key: Zeroizing<[u8; 32]>,
    node_id: NodeId,
}

impl core::fmt::Debug for NodeKeys {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("NodeKeys").field("node_id", &self.node_id).finish_non_exhaustive()
    }
}

impl NodeKeys {
    /// Derives the node's keys from its seed (domain-separated SHA-512).
    pub fn from_seed(seed: &[u8; 32]) -> Self {
        let signing = SigningKey::from_bytes(&derive(seed, SIGNING_KEY_TAG));
        let node_id = node_id_of(signing.verifying_key().as_bytes());
        Self { signing, grant_key: derive(seed, GRANT_KEY_TAG), attest_key: derive(seed, ATTEST_KEY_TAG), node_id }
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn signing_public(&self) -> [u8; 32] {
        self.signing.verifying_key().to_bytes()
    }

    /// The Ed25519 key that signs ledger records (used by the ledger core).
    pub fn signing_key(&self) -> &SigningKey {
        &self.signing
    }

    /// The HMAC key for capability tokens (used by the ledger core); never exported.
    pub fn grant_key(&self) -> &[u8; 32] {
        &self.grant_key
    }

    /// The secret of the Ed25519 attestation key (used by the attestation core); never
    /// exported.
    pub fn attest_secret(&self) -> &Zeroizing<[u8; 32]> {
        &self.attest_key
    }
}

/// Record kinds of the node journal.
pub mod record_kind {
    /// The identity seed; the first record of a node journal.
    pub const IDENTITY: u8 = 1;
    /// One start of the TCB, with its boot count.
    pub const BOOT: u8 = 2;
}

/// A record of the node journal.
#[derive(PartialEq, Eq)]
pub enum NodeRecord {
    Identity { seed: Zeroizing<[u8; 32]> },
    Boot { count: u32 },
}

impl core::fmt::Debug for NodeRecord {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        match self {
            Self::Identity { .. } => f.write_str("Identity { seed: <secret> }"),
            Self::Boot { count } => f.debug_struct("Boot").field("count", count).finish(),
        }
    }
}

/// Node journal errors.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum StateError {
    #[error("node journal record of kind {kind} has {len} bytes, expected {expected}")]
    BadLength { kind: u8, len: usize, expected: usize },
    #[error("unknown node journal record kind {0}")]
    UnknownKind(u8),
    #[error("node journal holds a second identity record")]
    SecondIdentity,
    #[error("node journal has a boot record before its identity record")]
    BootBeforeIdentity,
}

impl NodeRecord {
    /// Decodes a journal record (kind + payload), checking its length first.
    pub fn decode(kind: u8, payload: &[u8]) -> Result<Self, StateError> {
        let expect = |n: usize| {
            if payload.len() == n {
                Ok(())
            } else {
                Err(StateError::BadLength { kind, len: payload.len(), expected: n })
            }
        };
        match kind {
            record_kind::IDENTITY => {
                expect(32)?;
                let mut seed = Zeroizing::new([0u8; 32]);
                seed.copy_from_slice(payload);
                Ok(Self::Identity { seed })
            }
            record_kind::BOOT => {
                expect(4)?;
                Ok(Self::Boot { count: u32::from_le_bytes([payload[0], payload[1], payload[2], payload[3]]) })
            }
            k => Err(StateError::UnknownKind(k)),
        }
    }

    /// Encodes the record's payload into `out`; returns (kind, length).
    pub fn encode(&self, out: &mut [u8; 32]) -> (u8, usize) {
        match self {
            Self::Identity { seed } => {
                out.copy_from_slice(&seed[..]);
                (record_kind::IDENTITY, 32)
            }
            Self::Boot { count } => {
                out[..4].copy_from_slice(&count.to_le_bytes());
                (record_kind::BOOT, 4)
            }
        }
    }
}

/// What a node journal holds.
#[derive(Debug)]
pub struct Recovered {
    /// The identity seed; `None` on a fresh journal.
    pub seed: Option<Zeroizing<[u8; 32]>>,
    /// The last boot recorded; 0 on a fresh journal.
    pub boot_count: u32,
}

/// Node state rebuilt from the journal, in order.
#[derive(Debug, Default)]
pub struct Replay {
    seed: Option<Zeroizing<[u8; 32]>>,
    boot_count: u32,
    error: Option<StateError>,
}

impl Replay {
    /// Feeds one journal record. The first error sticks and is returned by [`Replay::finish`].
    pub fn record(&mut self, kind: u8, payload: &[u8]) {
        if self.error.is_some() {
            return;
        }
        let r = NodeRecord::decode(kind, payload).and_then(|rec| match rec {
            NodeRecord::Identity { .. } if self.seed.is_some() => Err(StateError::SecondIdentity),
            NodeRecord::Identity { seed } => {
                self.seed = Some(seed);
                Ok(())
            }
            NodeRecord::Boot { .. } if self.seed.is_none() => Err(StateError::BootBeforeIdentity),
            NodeRecord::Boot { count } => {
                self.boot_count = count;
                Ok(())
            }
        });
        if let Err(e) = r {
            self.error = Some(e);
        }
    }

    /// The state the journal holds, or its first inconsistency.
    pub fn finish(self) -> Result<Recovered, StateError> {
        match self.error {
            Some(e) => Err(e),
            None => Ok(Recovered { seed: self.seed, boot_count: self.boot_count }),
        }
    }
}

/// Counters and clock the platform supplies for a status answer.
#[derive(Debug, Clone)]
pub struct Runtime<'a> {
    pub uptime_ms: u64,
    pub requests_served: u64,
    pub requests_failed: u64,
    pub services: &'a [ServiceStatus],
}

/// The node service. It holds only public parts of the node's keys; the secret keys belong to
/// the service that uses them (the ledger).
#[derive(Debug)]
pub struct NodeCore {
    node_id: NodeId,
    signing_public: [u8; 32],
    attestation_public: Option<[u8; 32]>,
    platform: Platform,
    tcb_version: heapless::String<VERSION_STRING_MAX>,
    boot_count: u32,
}

impl NodeCore {
    /// `tcb_version` is cut to [`VERSION_STRING_MAX`] bytes.
    pub fn new(keys: &NodeKeys, platform: Platform, tcb_version: &str, boot_count: u32) -> Self {
        let mut v = heapless::String::new();
        for c in tcb_version.chars() {
            if v.push(c).is_err() {
                break;
            }
        }
        Self {
            node_id: keys.node_id(),
            signing_public: keys.signing_public(),
            attestation_public: None,
            platform,
            tcb_version: v,
            boot_count,
        }
    }

    /// The attestation key `NodePublicKeys` reports, once this TCB serves attestation.
    pub fn set_attestation_public(&mut self, key: Option<[u8; 32]>) {
        self.attestation_public = key;
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn signing_public(&self) -> [u8; 32] {
        self.signing_public
    }

    pub fn boot_count(&self) -> u32 {
        self.boot_count
    }

    /// Answers a node service request.
    pub fn handle(&self, request: &NodeRequest, rt: &Runtime<'_>) -> NodeResponse {
        let node_id = self.node_id;
        match request {
            NodeRequest::Identity => NodeResponse::Identity(NodeIdentity {
                node_id,
                platform: self.platform,
                tcb_version: self.tcb_version.clone(),
            }),
            NodeRequest::PublicKeys => NodeResponse::PublicKeys(NodePublicKeys {
                node_id,
                signing_key: ByteArray(self.signing_public),
                attestation_key: self.attestation_public.map(ByteArray),
            }),
            NodeRequest::Status => NodeResponse::Status(NodeStatus {
                node_id,
                platform: self.platform,
                tcb_version: self.tcb_version.clone(),
                uptime_ms: rt.uptime_ms,
                boot_count: self.boot_count,
                requests_served: rt.requests_served,
                requests_failed: rt.requests_failed,
                services: rt.services.iter().copied().take(8).collect(),
            }),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ed25519_dalek::{Signer, Verifier};

    #[test]
    fn keys_are_deterministic_separated_and_sign() {
        let a = NodeKeys::from_seed(&[7; 32]);
        let b = NodeKeys::from_seed(&[7; 32]);
        let c = NodeKeys::from_seed(&[8; 32]);
        assert_eq!(a.signing_public(), b.signing_public());
        assert_eq!(a.node_id(), b.node_id());
        assert_ne!(a.node_id(), c.node_id());
        assert_ne!(&a.grant_key()[..], &a.signing.to_bytes()[..]);
        assert_ne!(&a.attest_secret()[..], &a.signing.to_bytes()[..]);
        assert_ne!(&a.attest_secret()[..], &a.grant_key()[..]);
        assert_eq!(&a.attest_secret()[..], &b.attest_secret()[..]);
        assert_eq!(a.node_id(), node_id_of(&a.signing_public()));
        let sig = a.signing_key().sign(b"record");
        assert!(a.signing_key().verifying_key().verify(b"record", &sig).is_ok());
    }

    #[test]
    fn replay_rebuilds_seed_and_boot_count() {
        let mut r = Replay::default();
        let mut buf = [0u8; 32];
        for rec in [
            NodeRecord::Identity { seed: Zeroizing::new([3; 32]) },
            NodeRecord::Boot { count: 1 },
            NodeRecord::Boot { count: 2 },
        ] {
            let (k, n) = rec.encode(&mut buf);
            assert_eq!(NodeRecord::decode(k, &buf[..n]).unwrap(), rec);
            r.record(k, &buf[..n]);
        }
        let rec = r.finish().unwrap();
        assert_eq!(*rec.seed.unwrap(), [3; 32]);
        assert_eq!(rec.boot_count, 2);
    }

    #[test]
    fn replay_rejects_inconsistent_journals() {
        let mut r = Replay::default();
        r.record(record_kind::BOOT, &1u32.to_le_bytes());
        assert_eq!(r.finish().unwrap_err(), StateError::BootBeforeIdentity);
        let mut r = Replay::default();
        r.record(record_kind::IDENTITY, &[1; 32]);
        r.record(record_kind::IDENTITY, &[2; 32]);
        assert_eq!(r.finish().unwrap_err(), StateError::SecondIdentity);
        assert_eq!(
            NodeRecord::decode(record_kind::IDENTITY, &[0; 31]).unwrap_err(),
            StateError::BadLength { kind: 1, len: 31, expected: 32 }
        );
        assert_eq!(NodeRecord::decode(9, &[]).unwrap_err(), StateError::UnknownKind(9));
    }

    #[test]
    fn status_reports_runtime_and_identity() {
        let keys = NodeKeys::from_seed(&[1; 32]);
        let core = NodeCore::new(&keys, Platform::Hosted, "0.1.0", 3);
        let services = [ServiceStatus { service: 1, state: ppn_wire::service::ServiceState::Ready }];
        let rt = Runtime { uptime_ms: 5, requests_served: 10, requests_failed: 2, services: &services };
        let NodeResponse::Status(s) = core.handle(&NodeRequest::Status, &rt) else { panic!("not a status") };
        assert_eq!((s.uptime_ms, s.boot_count, s.requests_served, s.requests_failed), (5, 3, 10, 2));
        assert_eq!(s.node_id, keys.node_id());
        assert_eq!(&s.services[..], &services[..]);
        let NodeResponse::PublicKeys(k) = core.handle(&NodeRequest::PublicKeys, &rt) else { panic!("not keys") };
        assert_eq!(k.signing_key.0, keys.signing_public());
    }
}
