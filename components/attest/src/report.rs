//! An attestation report: an Entity Attestation Token (RFC 9711) as a tagged COSE_Sign1
//! (Ed25519, external AAD `"ppn/report/v1"`), signed by the running node's attestation key.
//! The payload is a CBOR map with exactly these claims:
//!
//! | key | claim | value |
//! | --- | --- | --- |
//! | 265 | `eat_profile` | text [`EAT_PROFILE`] |
//! | 10 | `eat_nonce` | bytes (8 to 64): the verifier's nonce |
//! | 6 | `iat` | uint, seconds since the Unix epoch (the node TCB's clock) |
//! | -70001 | VM | text (1 to 64 bytes): the VM's name on its node |
//! | -70002 | image root hash | bytes (32): the dm-verity root hash the VM booted with |
//! | -70003 | provisioning | bytes: the image's [`Provisioning`] statement, whole |
//! | -70004 | node id | bytes (8) |
//! | -70005 | key certificate | bytes ([`crate::CERT_LEN`]): the reporting node's [`KeyCert`] |

use crate::cose::{self, ClaimMap};
use crate::provision::check_name;
use crate::{Error, KeyCert, MAX_PROVISIONING, MAX_REPORT, NONCE_MAX, NONCE_MIN, Provisioning, Trust};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use coset::cbor::value::Value;
use ed25519_dalek::SigningKey;
use ppn_wire::{ByteArray, NodeId};

pub const EAT_PROFILE: &str = "tag:ppnfabric.org,2026:eat/v1";
pub(crate) const AAD: &[u8] = b"ppn/report/v1";
const WHAT: &str = "attestation report";
const KEYS: [i64; 8] = [265, 10, 6, -70001, -70002, -70003, -70004, -70005];

/// A signed report and what it claims.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Report {
    /// The report's bytes (tagged COSE_Sign1).
    pub bytes: Vec<u8>,
    pub nonce: Vec<u8>,
    pub issued_unix_s: u64,
    pub vm: String,
    pub image_root: [u8; 32],
    pub provisioning: Vec<u8>,
    pub node: NodeId,
    pub cert: KeyCert,
}

/// What a verified report proved, link by link (root → node key → attestation key → image →
/// report).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chain {
    pub report: Report,
    pub provisioning: Provisioning,
}

fn check_nonce(nonce: &[u8]) -> Result<(), Error> {
    if !(NONCE_MIN..=NONCE_MAX).contains(&nonce.len()) {
        return Err(Error::NonceLength(nonce.len()));
    }
    Ok(())
}

impl Report {
    pub(crate) fn sign(
        key: &SigningKey,
        cert: &KeyCert,
        vm: &str,
        image_root: &[u8; 32],
        provisioning: &[u8],
        nonce: &[u8],
        now_unix_s: u64,
    ) -> Result<Self, Error> {
        check_name(vm)?;
        check_nonce(nonce)?;
        if provisioning.len() > MAX_PROVISIONING {
            return Err(Error::TooLong {
                what: "provisioning statement",
                len: provisioning.len(),
                max: MAX_PROVISIONING,
            });
        }
        let payload = ClaimMap::new()
            .put(265, Value::Text(EAT_PROFILE.to_string()))
            .put(10, Value::Bytes(nonce.to_vec()))
            .put(6, Value::Integer(now_unix_s.into()))
            .put(-70001, Value::Text(vm.to_string()))
            .put(-70002, Value::Bytes(image_root.to_vec()))
            .put(-70003, Value::Bytes(provisioning.to_vec()))
            .put(-70004, Value::Bytes(cert.node.0.0.to_vec()))
            .put(-70005, Value::Bytes(cert.encode().to_vec()))
            .encode(WHAT)?;
        let bytes = cose::sign(key, AAD, payload, WHAT)?;
        Ok(Self {
            bytes,
            nonce: nonce.to_vec(),
            issued_unix_s: now_unix_s,
            vm: vm.to_string(),
            image_root: *image_root,
            provisioning: provisioning.to_vec(),
            node: cert.node,
            cert: cert.clone(),
        })
    }

    /// Parses a report without checking anything it claims.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(Self::decode_parts(bytes)?.0)
    }

    pub(crate) fn decode_parts(bytes: &[u8]) -> Result<(Self, coset::CoseSign1), Error> {
        let s = cose::parse(bytes, MAX_REPORT, WHAT)?;
        let mut m = ClaimMap::decode(s.payload.as_deref().unwrap_or_default(), &KEYS, WHAT)?;
        if m.text(265, WHAT)? != EAT_PROFILE {
            return Err(Error::Claims(WHAT));
        }
        let nonce = m.bytes(10, WHAT)?;
        check_nonce(&nonce)?;
        let issued_unix_s = m.uint(6, WHAT)?;
        let vm = m.text(-70001, WHAT)?;
        check_name(&vm)?;
        let image_root = m.array32(-70002, WHAT)?;
        let provisioning = m.bytes(-70003, WHAT)?;
        let node: [u8; 8] = m.bytes(-70004, WHAT)?.try_into().map_err(|_| Error::Claims(WHAT))?;
        let cert = KeyCert::decode(&m.bytes(-70005, WHAT)?)?;
        let node = NodeId(ByteArray(node));
        if node != cert.node {
            return Err(Error::Cert("the report's node id is not the certificate's"));
        }
        Ok((Self { bytes: bytes.to_vec(), nonce, issued_unix_s, vm, image_root, provisioning, node, cert }, s))
    }

    /// Checks a report offline against the fleet's `trust` and the verifier's `nonce`, link by
    /// link: the reporting node's certificate and standing, the report's signature, the nonce,
    /// the provisioning statement (its node's certificate, standing and signature), and that
    /// the image the VM booted is the provisioned one. The first link that fails answers.
    /// [`crate::Verifier`] does the same for many reports, checking each certificate and
    /// statement's signature once.
    pub fn verify(bytes: &[u8], trust: &impl Trust, nonce: &[u8]) -> Result<Chain, Error> {
        crate::Verifier::new(trust).verify_report(bytes, nonce)
    }
}
