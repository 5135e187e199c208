//! A provisioning statement: the provisioning node's attestation key says which dm-verity root
//! hash (with its salt and geometry) a sealed image has. A tagged COSE_Sign1 (Ed25519, external
//! AAD `"ppn/provision/v1"`) whose payload is a CBOR map with exactly these keys:
//!
//! | key | claim | value |
//! | --- | --- | --- |
//! | 265 | profile (as EAT's `eat_profile`) | text [`PROVISION_PROFILE`] |
//! | 6 | issued (as CWT `iat`) | uint, seconds since the Unix epoch |
//! | -70100 | root hash | bytes (32): the dm-verity root hash (sha256) |
//! | -70101 | salt | bytes (32) |
//! | -70102 | data blocks | uint: 4096-byte blocks the tree covers |
//! | -70103 | hash offset | uint: byte offset of the verity superblock in the image |
//! | -70104 | image | text (1 to 64 bytes): the image's name |
//! | -70105 | key certificate | bytes ([`crate::CERT_LEN`]): the provisioning node's [`KeyCert`] |

use crate::cose::{self, ClaimMap};
use crate::{Error, KeyCert, MAX_NAME, MAX_PROVISIONING, Trust};
use alloc::string::{String, ToString};
use alloc::vec::Vec;
use coset::cbor::value::Value;
use ed25519_dalek::SigningKey;

pub const PROVISION_PROFILE: &str = "tag:ppnfabric.org,2026:provision/v1";
pub(crate) const AAD: &[u8] = b"ppn/provision/v1";
const WHAT: &str = "provisioning statement";
const KEYS: [i64; 8] = [265, 6, -70100, -70101, -70102, -70103, -70104, -70105];

/// A sealed image's dm-verity parameters (sha256, 4096-byte data and hash blocks, format 1).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct VerityParams {
    pub root_hash: [u8; 32],
    pub salt: [u8; 32],
    pub data_blocks: u64,
    pub hash_offset: u64,
}

/// A signed provisioning statement and what it says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Provisioning {
    /// The statement's bytes (tagged COSE_Sign1).
    pub bytes: Vec<u8>,
    pub image: String,
    pub verity: VerityParams,
    pub issued_unix_s: u64,
    pub cert: KeyCert,
}

pub(crate) fn check_name(name: &str) -> Result<(), Error> {
    if name.is_empty() || name.len() > MAX_NAME {
        return Err(Error::Name(name.len()));
    }
    Ok(())
}

impl Provisioning {
    pub(crate) fn sign(
        key: &SigningKey,
        cert: &KeyCert,
        image: &str,
        verity: &VerityParams,
        now_unix_s: u64,
    ) -> Result<Self, Error> {
        check_name(image)?;
        let payload = ClaimMap::new()
            .put(265, Value::Text(PROVISION_PROFILE.to_string()))
            .put(6, Value::Integer(now_unix_s.into()))
            .put(-70100, Value::Bytes(verity.root_hash.to_vec()))
            .put(-70101, Value::Bytes(verity.salt.to_vec()))
            .put(-70102, Value::Integer(verity.data_blocks.into()))
            .put(-70103, Value::Integer(verity.hash_offset.into()))
            .put(-70104, Value::Text(image.to_string()))
            .put(-70105, Value::Bytes(cert.encode().to_vec()))
            .encode(WHAT)?;
        let bytes = cose::sign(key, AAD, payload, WHAT)?;
        Ok(Self { bytes, image: image.to_string(), verity: *verity, issued_unix_s: now_unix_s, cert: cert.clone() })
    }

    /// Parses a statement without checking its signature or its signer's standing.
    pub fn decode(bytes: &[u8]) -> Result<Self, Error> {
        Ok(Self::decode_parts(bytes)?.0)
    }

    pub(crate) fn decode_parts(bytes: &[u8]) -> Result<(Self, coset::CoseSign1), Error> {
        let s = cose::parse(bytes, MAX_PROVISIONING, WHAT)?;
        let mut m = ClaimMap::decode(s.payload.as_deref().unwrap_or_default(), &KEYS, WHAT)?;
        if m.text(265, WHAT)? != PROVISION_PROFILE {
            return Err(Error::Claims(WHAT));
        }
        let issued_unix_s = m.uint(6, WHAT)?;
        let verity = VerityParams {
            root_hash: m.array32(-70100, WHAT)?,
            salt: m.array32(-70101, WHAT)?,
            data_blocks: m.uint(-70102, WHAT)?,
            hash_offset: m.uint(-70103, WHAT)?,
        };
        let image = m.text(-70104, WHAT)?;
        check_name(&image)?;
        let cert = KeyCert::decode(&m.bytes(-70105, WHAT)?)?;
        Ok((Self { bytes: bytes.to_vec(), image, verity, issued_unix_s, cert }, s))
    }

    /// Parses and checks a statement: its signer's certificate, the signer's standing in
    /// `trust`, and the signature.
    pub fn verify(bytes: &[u8], trust: &impl Trust) -> Result<Self, Error> {
        crate::Verifier::new(trust).verify_provisioning(bytes)
    }
}
