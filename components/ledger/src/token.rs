//! Capability tokens: 60 bytes, fixed layout, HMAC-SHA256 tag truncated to 128 bits.
//!
//! ```text
//! offset size field
//!  0      2   magic          b"PT"
//!  2      1   version        1
//!  3      1   resource type  (ppn_wire::service::ResourceType as u8)
//!  4      8   issuer         node id of the issuing TCB
//! 12      8   grantee        node id the grant is for
//! 20      8   resource id    u64 little-endian
//! 28      8   expires        u64 little-endian, seconds since the Unix epoch
//! 36      8   sequence       u64 little-endian, unique per issuer
//! 44     16   tag            HMAC-SHA256(grant key, bytes 0..44), first 16 bytes
//! ```
//!
//! Only the issuing TCB holds the grant key, so only it can issue or check a token; it never
//! leaves that TCB. The grant key is derived for tokens alone (domain-separated from the node
//! seed), and the tagged bytes begin with the token magic and version, so no domain tag is added
//! to the MAC input: 44 bytes fit one SHA-256 block, and with the keyed HMAC state computed once
//! ([`TokenKey`]) a tag costs two SHA-256 compressions.

use hmac::{Hmac, Mac};
use ppn_wire::ByteArray;
use ppn_wire::service::{NodeId, ResourceType};
use sha2::Sha256;
use subtle::ConstantTimeEq;
use zerocopy::little_endian::U64;
use zerocopy::{FromBytes, Immutable, IntoBytes, KnownLayout, Unaligned};

/// Token magic.
pub const MAGIC: [u8; 2] = *b"PT";
/// Token format version.
pub const VERSION: u8 = 1;
/// Encoded token size.
pub const TOKEN_LEN: usize = 60;
/// Bytes covered by the tag.
const SIGNED_LEN: usize = 44;
/// Tag length: 128 bits of HMAC-SHA256.
pub const TAG_LEN: usize = 16;

/// A grant key ready for tagging: the HMAC state after the key, computed once.
#[derive(Clone)]
pub struct TokenKey(Hmac<Sha256>);

impl core::fmt::Debug for TokenKey {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.write_str("TokenKey(<secret>)")
    }
}

impl TokenKey {
    pub fn new(grant_key: &[u8; 32]) -> Self {
        Self(<Hmac<Sha256> as Mac>::new_from_slice(grant_key).expect("HMAC takes any key length"))
    }
}

/// A token's bytes, viewed in place.
#[derive(Debug, Clone, Copy, PartialEq, Eq, FromBytes, IntoBytes, KnownLayout, Immutable, Unaligned)]
#[repr(C)]
pub struct TokenBytes {
    pub magic: [u8; 2],
    pub version: u8,
    pub resource_type: u8,
    pub issuer: [u8; 8],
    pub grantee: [u8; 8],
    pub resource_id: U64,
    pub expires_unix_s: U64,
    pub sequence: U64,
    pub tag: [u8; TAG_LEN],
}

const _: () = assert!(core::mem::size_of::<TokenBytes>() == TOKEN_LEN);
const _: () = assert!(TOKEN_LEN <= ppn_wire::service::TOKEN_MAX);

/// What a token grants.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Claims {
    pub issuer: NodeId,
    pub grantee: NodeId,
    pub resource_type: ResourceType,
    pub resource_id: u64,
    pub expires_unix_s: u64,
    pub sequence: u64,
}

/// Why token bytes are not a token.
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
pub enum TokenError {
    #[error("token is {0} bytes, expected {TOKEN_LEN}")]
    Length(usize),
    #[error("bad token magic")]
    Magic,
    #[error("unsupported token version {0}")]
    Version(u8),
}

fn tag(key: &TokenKey, signed: &[u8]) -> [u8; TAG_LEN] {
    let mut mac = key.0.clone();
    mac.update(signed);
    let full = mac.finalize().into_bytes();
    let mut out = [0u8; TAG_LEN];
    out.copy_from_slice(&full[..TAG_LEN]);
    out
}

impl TokenBytes {
    /// Checks length, magic and version; returns a view of the bytes. The tag is not checked.
    pub fn parse(bytes: &[u8]) -> Result<&TokenBytes, TokenError> {
        let t = TokenBytes::ref_from_bytes(bytes).map_err(|_| TokenError::Length(bytes.len()))?;
        if t.magic != MAGIC {
            return Err(TokenError::Magic);
        }
        if t.version != VERSION {
            return Err(TokenError::Version(t.version));
        }
        Ok(t)
    }

    /// Builds and tags a token.
    pub fn issue(key: &TokenKey, c: &Claims) -> TokenBytes {
        let mut t = TokenBytes {
            magic: MAGIC,
            version: VERSION,
            resource_type: c.resource_type.into(),
            issuer: c.issuer.0.0,
            grantee: c.grantee.0.0,
            resource_id: U64::new(c.resource_id),
            expires_unix_s: U64::new(c.expires_unix_s),
            sequence: U64::new(c.sequence),
            tag: [0; TAG_LEN],
        };
        t.tag = tag(key, &t.as_bytes()[..SIGNED_LEN]);
        t
    }

    /// True when the tag checks under `key` (constant-time comparison).
    pub fn tag_ok(&self, key: &TokenKey) -> bool {
        let expect = tag(key, &self.as_bytes()[..SIGNED_LEN]);
        expect.ct_eq(&self.tag).into()
    }

    pub fn claims(&self) -> Claims {
        Claims {
            issuer: NodeId(ByteArray(self.issuer)),
            grantee: NodeId(ByteArray(self.grantee)),
            resource_type: ResourceType::from(self.resource_type),
            resource_id: self.resource_id.get(),
            expires_unix_s: self.expires_unix_s.get(),
            sequence: self.sequence.get(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn claims() -> Claims {
        Claims {
            issuer: NodeId(ByteArray([1; 8])),
            grantee: NodeId(ByteArray([2; 8])),
            resource_type: ResourceType::Memory,
            resource_id: 77,
            expires_unix_s: 1_000,
            sequence: 5,
        }
    }

    #[test]
    fn issued_tokens_parse_and_check_and_every_bit_matters() {
        let key = TokenKey::new(&[9u8; 32]);
        let t = TokenBytes::issue(&key, &claims());
        let bytes = t.as_bytes();
        assert_eq!(bytes.len(), TOKEN_LEN);
        let parsed = TokenBytes::parse(bytes).unwrap();
        assert!(parsed.tag_ok(&key));
        assert_eq!(parsed.claims(), claims());
        assert!(!parsed.tag_ok(&TokenKey::new(&[8u8; 32])));
        for i in 4..TOKEN_LEN {
            for bit in 0..8 {
                let mut b = bytes.to_vec();
                b[i] ^= 1 << bit;
                assert!(!TokenBytes::parse(&b).unwrap().tag_ok(&key), "flip at byte {i} bit {bit} accepted");
            }
        }
    }

    #[test]
    fn malformed_tokens_are_refused_before_anything_else() {
        let t = TokenBytes::issue(&TokenKey::new(&[9; 32]), &claims());
        let b = t.as_bytes();
        assert_eq!(TokenBytes::parse(&b[..59]), Err(TokenError::Length(59)));
        let mut long = b.to_vec();
        long.push(0);
        assert_eq!(TokenBytes::parse(&long), Err(TokenError::Length(61)));
        let mut m = b.to_vec();
        m[0] = b'X';
        assert_eq!(TokenBytes::parse(&m), Err(TokenError::Magic));
        m[0] = b'P';
        m[2] = 2;
        assert_eq!(TokenBytes::parse(&m), Err(TokenError::Version(2)));
    }
}
