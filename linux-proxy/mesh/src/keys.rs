//! WireGuard static keys: generation and the base64 form WireGuard tools print and read.
//!
//! A key's text form is standard base64 with padding of its 32 bytes: exactly 44 characters,
//! the last one `=` (as `wg genkey` / `wg pubkey` print). Surrounding whitespace is ignored;
//! anything else that is not such a string is an error, never a panic.

use crate::{PublicKey, StaticSecret};
use base64::Engine as _;
use base64::engine::general_purpose::STANDARD;

/// Length of a key's base64 text form.
pub const KEY_TEXT_LEN: usize = 44;

/// A key that could not be read or made.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum KeyError {
    #[error("a WireGuard key is {KEY_TEXT_LEN} base64 characters, got {0}")]
    Length(usize),
    #[error("not base64: {0}")]
    Base64(String),
    #[error("the OS entropy source failed: {0}")]
    Entropy(String),
}

/// A new static private key from the OS entropy source.
pub fn generate_private_key() -> Result<StaticSecret, KeyError> {
    let mut bytes = [0u8; 32];
    getrandom::fill(&mut bytes).map_err(|e| KeyError::Entropy(e.to_string()))?;
    let secret = StaticSecret::from(bytes);
    bytes.fill(0);
    Ok(secret)
}

/// The public key of `secret`.
pub fn public_key(secret: &StaticSecret) -> PublicKey {
    PublicKey::from(secret)
}

/// The base64 form of a public key.
pub fn encode_public_key(key: &PublicKey) -> String {
    STANDARD.encode(key.as_bytes())
}

/// The base64 form of a private key (for a config file the proxy owns; never log it).
pub fn encode_private_key(key: &StaticSecret) -> String {
    STANDARD.encode(key.as_bytes())
}

/// Reads a public key from its base64 form.
pub fn decode_public_key(text: &str) -> Result<PublicKey, KeyError> {
    decode(text).map(PublicKey::from)
}

/// Reads a private key from its base64 form.
pub fn decode_private_key(text: &str) -> Result<StaticSecret, KeyError> {
    let mut bytes = decode(text)?;
    let secret = StaticSecret::from(bytes);
    bytes.fill(0);
    Ok(secret)
}

fn decode(text: &str) -> Result<[u8; 32], KeyError> {
    let text = text.trim();
    if text.len() != KEY_TEXT_LEN {
        return Err(KeyError::Length(text.len()));
    }
    let mut out = [0u8; 33];
    // 44 characters with one `=` decode to exactly 32 bytes; the spare byte catches "==" forms
    // and any other length mistake the decoder might let through.
    let n = STANDARD.decode_slice(text, &mut out).map_err(|e| KeyError::Base64(e.to_string()))?;
    if n != 32 {
        return Err(KeyError::Length(text.len()));
    }
    let mut key = [0u8; 32];
    key.copy_from_slice(&out[..32]);
    out.fill(0);
    Ok(key)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn round_trip_and_matches_wireguard_form() {
        // RFC 7748 §6.1 test vector: Alice's private and public key.
        let private = [
            0x77, 0x07, 0x6d, 0x0a, 0x73, 0x18, 0xa5, 0x7d, 0x3c, 0x16, 0xc1, 0x72, 0x51, 0xb2, 0x66, 0x45, 0xdf, 0x4c,
            0x2f, 0x87, 0xeb, 0xc0, 0x99, 0x2a, 0xb1, 0x77, 0xfb, 0xa5, 0x1d, 0xb9, 0x2c, 0x2a,
        ];
        let secret = StaticSecret::from(private);
        let text = encode_private_key(&secret);
        assert_eq!(text, "dwdtCnMYpX08FsFyUbJmRd9ML4frwJkqsXf7pR25LCo=");
        let public = public_key(&secret);
        assert_eq!(encode_public_key(&public), "hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=");
        assert_eq!(decode_private_key(&text).unwrap().to_bytes(), private);
        assert_eq!(decode_public_key(" hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=\n").unwrap(), public);
        let fresh = generate_private_key().unwrap();
        assert_eq!(decode_private_key(&encode_private_key(&fresh)).unwrap().to_bytes(), fresh.to_bytes());
    }

    #[test]
    fn bad_text_is_an_error() {
        assert_eq!(decode_public_key(""), Err(KeyError::Length(0)));
        assert_eq!(decode_public_key("abc"), Err(KeyError::Length(3)));
        assert!(matches!(decode_public_key("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTm=="), Err(KeyError::Base64(_))));
        assert!(matches!(decode_public_key("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066Spjqqb!mo="), Err(KeyError::Base64(_))));
        assert!(matches!(decode_public_key("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo"), Err(KeyError::Length(43))));
        assert!(decode_private_key("éééééééééééééééééééééé").is_err());
    }
}
