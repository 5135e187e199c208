//! The attestation key certificate: the node's signing key vouches for its attestation key.
//!
//! | offset | size | field |
//! | --- | --- | --- |
//! | 0 | 4 | magic `PPNK` |
//! | 4 | 1 | version `1` |
//! | 5 | 8 | node id (`ppn_node_core::node_id_of` the signing key) |
//! | 13 | 32 | the node's signing key (Ed25519 public) |
//! | 45 | 32 | the attestation key (Ed25519 public) |
//! | 77 | 64 | Ed25519 signature by the signing key over `"ppn/attest-key-cert/v1"` ‖ bytes 0..77 |
//!
//! It carries no validity period: it is as good as the node's signing key, which the fleet
//! revokes by revoking the node. Ed25519 signatures are deterministic, so a node's certificate is
//! the same at every boot.

use crate::{Error, Role, Standing, Trust};
use ed25519_dalek::{Signature, Signer, SigningKey, VerifyingKey};
use ppn_wire::{ByteArray, NodeId};

pub const MAGIC: [u8; 4] = *b"PPNK";
pub const VERSION: u8 = 1;
/// Bytes in a certificate.
pub const CERT_LEN: usize = 141;
const SIGNED: usize = 77;
const TAG: &[u8] = b"ppn/attest-key-cert/v1";

/// A node's certificate for its attestation key.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct KeyCert {
    pub node: NodeId,
    pub node_key: [u8; 32],
    pub attest_key: [u8; 32],
    pub signature: [u8; 64],
}

fn message(signed: &[u8]) -> alloc::vec::Vec<u8> {
    let mut m = alloc::vec::Vec::with_capacity(TAG.len() + signed.len());
    m.extend_from_slice(TAG);
    m.extend_from_slice(signed);
    m
}

impl KeyCert {
    /// Issued by `node_key` for `attest_key`.
    pub fn issue(node_key: &SigningKey, attest_key: [u8; 32]) -> Self {
        let public = node_key.verifying_key().to_bytes();
        let mut cert =
            Self { node: ppn_node_core::node_id_of(&public), node_key: public, attest_key, signature: [0; 64] };
        let bytes = cert.encode();
        cert.signature = node_key.sign(&message(&bytes[..SIGNED])).to_bytes();
        cert
    }

    pub fn encode(&self) -> [u8; CERT_LEN] {
        let mut b = [0u8; CERT_LEN];
        b[0..4].copy_from_slice(&MAGIC);
        b[4] = VERSION;
        b[5..13].copy_from_slice(&self.node.0.0);
        b[13..45].copy_from_slice(&self.node_key);
        b[45..77].copy_from_slice(&self.attest_key);
        b[77..].copy_from_slice(&self.signature);
        b
    }

    /// Parses exactly one certificate (no signature check: [`KeyCert::check`]).
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        let b: &[u8; CERT_LEN] = bytes.try_into().map_err(|_| Error::Cert("not 141 bytes"))?;
        if b[0..4] != MAGIC {
            return Err(Error::Cert("bad magic"));
        }
        if b[4] != VERSION {
            return Err(Error::Cert("unknown version"));
        }
        let arr = |r: core::ops::Range<usize>| -> [u8; 32] { b[r].try_into().expect("32 bytes") };
        Ok(Self {
            node: NodeId(ByteArray(b[5..13].try_into().expect("8 bytes"))),
            node_key: arr(13..45),
            attest_key: arr(45..77),
            signature: b[77..].try_into().expect("64 bytes"),
        })
    }

    /// Checks the certificate's own signature (not the node's standing); returns the
    /// attestation key.
    pub fn check_signature(&self) -> Result<VerifyingKey, Error> {
        if ppn_node_core::node_id_of(&self.node_key) != self.node {
            return Err(Error::Cert("the node id is not the signing key's"));
        }
        let node_key = VerifyingKey::from_bytes(&self.node_key).map_err(|_| Error::Cert("bad node key"))?;
        let bytes = self.encode();
        node_key
            .verify_strict(&message(&bytes[..SIGNED]), &Signature::from_bytes(&self.signature))
            .map_err(|_| Error::Cert("the signature does not check under the node's signing key"))?;
        VerifyingKey::from_bytes(&self.attest_key).map_err(|_| Error::Cert("bad attestation key"))
    }

    /// The fleet's standing of the certificate's node, as an error unless trusted.
    pub fn check_standing(&self, role: Role, trust: &impl Trust) -> Result<(), Error> {
        match trust.standing(self.node, &self.node_key) {
            Standing::Trusted => Ok(()),
            Standing::Revoked => Err(Error::RevokedNode { role, node: self.node }),
            Standing::Unknown => Err(Error::UnknownNode { role, node: self.node }),
        }
    }

    /// Checks the certificate and the fleet's trust in its node; returns the attestation key.
    pub fn check(&self, role: Role, trust: &impl Trust) -> Result<VerifyingKey, Error> {
        let key = self.check_signature()?;
        self.check_standing(role, trust)?;
        Ok(key)
    }
}
