//! Ledger records: signed, content-addressed nodes of the Merkle DAG.
//!
//! Canonical encoding (little-endian), the only one accepted:
//!
//! ```text
//! offset      size    field
//!  0           2      magic        b"PR"
//!  2           1      version      1
//!  3           1      kind         1 NodeAdmitted, 2 NodeRevoked, 3 GrantRevoked, 4 ImageProvisioned
//!  4           8      author       node id of the signing node
//! 12           8      created      u64, seconds since the Unix epoch (author's clock, informative)
//! 20           1      parents n    0 ..= MAX_PARENTS
//! 21          32*n    parents      record ids, strictly ascending (so no duplicates)
//! 21+32n       b      body         NodeAdmitted: signing public key (32), WireGuard public key (32)
//!                                  NodeRevoked:  node id (8)
//!                                  GrantRevoked: issuer (8), first u64, last u64, first <= last
//!                                  ImageProvisioned: dm-verity root hash (32), SHA-256 of the
//!                                                    provisioning statement (32)
//! 21+32n+b    64      signature    Ed25519 by the author over "ppn/record/v1" || bytes before it
//! ```
//!
//! The record id is SHA-256 over all the bytes, signature included. Signatures are checked with
//! `verify_strict` (no malleable signatures), so one signed content has exactly one id.

use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ppn_wire::ByteArray;
use ppn_wire::service::{Digest, NodeId};
use sha2::{Digest as _, Sha256};

extern crate alloc;
use alloc::vec::Vec;

pub const MAGIC: [u8; 2] = *b"PR";
pub const VERSION: u8 = 1;
/// Most parents a record may name.
pub const MAX_PARENTS: usize = 16;
const FIXED: usize = 21;
const SIG_LEN: usize = 64;
const DOMAIN: &[u8] = b"ppn/record/v1";
/// Largest body (NodeAdmitted's two keys).
const MAX_BODY: usize = 64;
/// Largest encoded record.
pub const MAX_RECORD_LEN: usize = FIXED + 32 * MAX_PARENTS + MAX_BODY + SIG_LEN;
const _: () = assert!(MAX_RECORD_LEN == 661);

const _: () = assert!(MAX_RECORD_LEN <= ppn_wire::service::RECORD_MAX);

/// A record id: SHA-256 of the record's bytes.
pub type RecordId = Digest;

/// What a record says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Body {
    /// `key`'s node joins the fleet; its proxy's mesh (WireGuard) public key is `wireguard`,
    /// which the admitting TCB key-confirmed at pairing.
    NodeAdmitted { key: [u8; 32], wireguard: [u8; 32] },
    /// `node` is cut off: its grants fail and its later records are refused.
    NodeRevoked { node: NodeId },
    /// Grants of `issuer` with `first <= sequence <= last` are revoked.
    GrantRevoked { issuer: NodeId, first: u64, last: u64 },
    /// The author's TCB signed a provisioning statement (docs/attestation.md) for a sealed image
    /// whose dm-verity root hash is `root_hash`; `statement` is the SHA-256 of the statement's
    /// bytes. The fleet's record of what each node provisioned, gossiped like any record.
    ImageProvisioned { root_hash: [u8; 32], statement: [u8; 32] },
}

impl Body {
    fn kind(&self) -> u8 {
        match self {
            Body::NodeAdmitted { .. } => 1,
            Body::NodeRevoked { .. } => 2,
            Body::GrantRevoked { .. } => 3,
            Body::ImageProvisioned { .. } => 4,
        }
    }
}

/// A decoded record; `bytes` is its canonical encoding.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    pub id: RecordId,
    pub author: NodeId,
    pub created_unix_s: u64,
    pub parents: Vec<RecordId>,
    pub body: Body,
    pub signature: [u8; 64],
    pub bytes: Vec<u8>,
}

/// Why bytes are not a record.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum RecordError {
    #[error("record of {0} bytes is shorter than its fixed part")]
    Short(usize),
    #[error("record of {got} bytes, its fields need {need}")]
    Length { got: usize, need: usize },
    #[error("bad record magic")]
    Magic,
    #[error("unsupported record version {0}")]
    Version(u8),
    #[error("unknown record kind {0}")]
    Kind(u8),
    #[error("{0} parents, at most {MAX_PARENTS}")]
    TooManyParents(usize),
    #[error("parents not strictly ascending")]
    ParentOrder,
    #[error("grant range first {first} > last {last}")]
    Range { first: u64, last: u64 },
}

fn u64_at(b: &[u8], at: usize) -> u64 {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    u64::from_le_bytes(a)
}

fn key32(b: &[u8], at: usize) -> [u8; 32] {
    let mut a = [0u8; 32];
    a.copy_from_slice(&b[at..at + 32]);
    a
}

fn id8(b: &[u8], at: usize) -> NodeId {
    let mut a = [0u8; 8];
    a.copy_from_slice(&b[at..at + 8]);
    NodeId(ByteArray(a))
}

/// The body length of each kind; every one is at most `MAX_BODY` (a unit test checks).
fn body_len(kind: u8) -> Result<usize, RecordError> {
    match kind {
        1 => Ok(64),
        2 => Ok(8),
        3 => Ok(24),
        4 => Ok(64),
        k => Err(RecordError::Kind(k)),
    }
}

impl Record {
    /// Decodes and checks structure (lengths, magic, version, kind, parent order, range) before
    /// anything else. The signature is not checked here: see [`Record::signature_ok`].
    pub fn decode(bytes: &[u8]) -> Result<Record, RecordError> {
        if bytes.len() < FIXED {
            return Err(RecordError::Short(bytes.len()));
        }
        if bytes[0..2] != MAGIC {
            return Err(RecordError::Magic);
        }
        if bytes[2] != VERSION {
            return Err(RecordError::Version(bytes[2]));
        }
        let kind = bytes[3];
        let n = bytes[20] as usize;
        if n > MAX_PARENTS {
            return Err(RecordError::TooManyParents(n));
        }
        let blen = body_len(kind)?;
        let body_at = FIXED + 32 * n;
        let need = body_at + blen + SIG_LEN;
        if bytes.len() != need {
            return Err(RecordError::Length { got: bytes.len(), need });
        }
        let mut parents = Vec::with_capacity(n);
        for i in 0..n {
            let mut p = [0u8; 32];
            p.copy_from_slice(&bytes[FIXED + 32 * i..FIXED + 32 * (i + 1)]);
            if parents.last().is_some_and(|last: &RecordId| last.0 >= p) {
                return Err(RecordError::ParentOrder);
            }
            parents.push(ByteArray(p));
        }
        let body = match kind {
            1 => Body::NodeAdmitted { key: key32(bytes, body_at), wireguard: key32(bytes, body_at + 32) },
            2 => Body::NodeRevoked { node: id8(bytes, body_at) },
            4 => Body::ImageProvisioned { root_hash: key32(bytes, body_at), statement: key32(bytes, body_at + 32) },
            _ => {
                let (first, last) = (u64_at(bytes, body_at + 8), u64_at(bytes, body_at + 16));
                if first > last {
                    return Err(RecordError::Range { first, last });
                }
                Body::GrantRevoked { issuer: id8(bytes, body_at), first, last }
            }
        };
        let mut signature = [0u8; 64];
        signature.copy_from_slice(&bytes[need - SIG_LEN..]);
        Ok(Record {
            id: ByteArray(Sha256::digest(bytes).into()),
            author: id8(bytes, 4),
            created_unix_s: u64_at(bytes, 12),
            parents,
            body,
            signature,
            bytes: bytes.to_vec(),
        })
    }

    /// Builds and signs a record. `parents` are sorted and deduplicated, and cut to the
    /// [`MAX_PARENTS`] largest ids if there are more.
    pub fn sign(key: &SigningKey, author: NodeId, created_unix_s: u64, parents: &[RecordId], body: Body) -> Record {
        let mut ps: Vec<RecordId> = parents.to_vec();
        ps.sort_unstable();
        ps.dedup();
        if ps.len() > MAX_PARENTS {
            ps.drain(..ps.len() - MAX_PARENTS);
        }
        let mut b = Vec::with_capacity(MAX_RECORD_LEN);
        b.extend_from_slice(&MAGIC);
        b.push(VERSION);
        b.push(body.kind());
        b.extend_from_slice(&author.0.0);
        b.extend_from_slice(&created_unix_s.to_le_bytes());
        b.push(ps.len() as u8);
        for p in &ps {
            b.extend_from_slice(&p.0);
        }
        match body {
            Body::NodeAdmitted { key, wireguard } => {
                b.extend_from_slice(&key);
                b.extend_from_slice(&wireguard);
            }
            Body::NodeRevoked { node } => b.extend_from_slice(&node.0.0),
            Body::GrantRevoked { issuer, first, last } => {
                b.extend_from_slice(&issuer.0.0);
                b.extend_from_slice(&first.to_le_bytes());
                b.extend_from_slice(&last.to_le_bytes());
            }
            Body::ImageProvisioned { root_hash, statement } => {
                b.extend_from_slice(&root_hash);
                b.extend_from_slice(&statement);
            }
        }
        let sig = key.sign(&signed_message(&b));
        b.extend_from_slice(&sig.to_bytes());
        Record::decode(&b).expect("a record we built is well-formed")
    }

    /// True when the signature checks, strictly, under `key`.
    pub fn signature_ok(&self, key: &VerifyingKey) -> bool {
        let signed = &self.bytes[..self.bytes.len() - SIG_LEN];
        key.verify_strict(&signed_message(signed), &Signature::from_bytes(&self.signature)).is_ok()
    }
}

fn signed_message(signed: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(DOMAIN.len() + signed.len());
    m.extend_from_slice(DOMAIN);
    m.extend_from_slice(signed);
    m
}

#[cfg(test)]
mod tests {
    use super::*;

    fn key(n: u8) -> SigningKey {
        SigningKey::from_bytes(&[n; 32])
    }

    #[test]
    fn every_kind_round_trips_and_signs() {
        let k = key(1);
        let parents = [ByteArray([3; 32]), ByteArray([1; 32]), ByteArray([3; 32])];
        for body in [
            Body::NodeAdmitted { key: [5; 32], wireguard: [6; 32] },
            Body::NodeRevoked { node: NodeId(ByteArray([6; 8])) },
            Body::GrantRevoked { issuer: NodeId(ByteArray([7; 8])), first: 3, last: 9 },
            Body::ImageProvisioned { root_hash: [8; 32], statement: [9; 32] },
        ] {
            let r = Record::sign(&k, NodeId(ByteArray([1; 8])), 42, &parents, body);
            assert_eq!(r.parents, [ByteArray([1; 32]), ByteArray([3; 32])]);
            let d = Record::decode(&r.bytes).unwrap();
            assert_eq!(d, r);
            assert!(d.signature_ok(&k.verifying_key()));
            assert!(!d.signature_ok(&key(2).verifying_key()));
            assert!(r.bytes.len() <= MAX_RECORD_LEN);
        }
    }

    #[test]
    fn any_flipped_bit_breaks_the_signature_or_the_structure() {
        let k = key(1);
        let r = Record::sign(
            &k,
            NodeId(ByteArray([1; 8])),
            42,
            &[ByteArray([1; 32])],
            Body::NodeRevoked { node: NodeId(ByteArray([2; 8])) },
        );
        for i in 0..r.bytes.len() {
            let mut b = r.bytes.clone();
            b[i] ^= 0x10;
            if let Ok(d) = Record::decode(&b) {
                assert!(!d.signature_ok(&k.verifying_key()), "flip at {i} still verifies");
                assert_ne!(d.id, r.id);
            }
        }
    }

    #[test]
    fn structure_errors_are_specific() {
        let k = key(1);
        let r = Record::sign(
            &k,
            NodeId(ByteArray([1; 8])),
            0,
            &[],
            Body::GrantRevoked { issuer: NodeId(ByteArray([2; 8])), first: 1, last: 2 },
        );
        assert_eq!(Record::decode(&r.bytes[..10]), Err(RecordError::Short(10)));
        assert_eq!(
            Record::decode(&r.bytes[..r.bytes.len() - 1]).unwrap_err(),
            RecordError::Length { got: r.bytes.len() - 1, need: r.bytes.len() }
        );
        let mut b = r.bytes.clone();
        b[3] = 9;
        assert_eq!(Record::decode(&b), Err(RecordError::Kind(9)));
        let mut b = r.bytes.clone();
        b[20] = 17;
        assert_eq!(Record::decode(&b), Err(RecordError::TooManyParents(17)));
        let mut b = r.bytes.clone();
        b[21 + 8..21 + 16].copy_from_slice(&5u64.to_le_bytes());
        assert_eq!(Record::decode(&b), Err(RecordError::Range { first: 5, last: 2 }));
        // Two equal parents: not strictly ascending.
        let mut b = r.bytes[..21].to_vec();
        b[20] = 2;
        b.extend_from_slice(&[4; 64]);
        b.extend_from_slice(&r.bytes[21..]);
        assert_eq!(Record::decode(&b), Err(RecordError::ParentOrder));
    }

    #[test]
    fn every_body_fits_the_largest_record() {
        for kind in 1..=4 {
            assert!(body_len(kind).unwrap() <= MAX_BODY, "kind {kind}");
        }
        assert!(body_len(5).is_err());
    }
}
