//! Arbitrary bytes as a capability token: `TokenBytes::parse` must return, never panic; it accepts
//! exactly the 60-byte strings with the token magic and version; and a parsed token's claims, tag
//! check and bytes agree with what `TokenBytes::issue` builds from those claims.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppn_ledger::token::{MAGIC, TAG_LEN, VERSION};
use ppn_ledger::{TOKEN_LEN, TokenBytes, TokenError};
use zerocopy::IntoBytes;

/// The bytes the tag covers: everything before it.
const SIGNED_LEN: usize = TOKEN_LEN - TAG_LEN;

fuzz_target!(|data: &[u8]| {
    let token = match TokenBytes::parse(data) {
        Ok(t) => t,
        Err(e) => {
            // Checked in this order: length, magic, version.
            let expected = if data.len() != TOKEN_LEN {
                TokenError::Length(data.len())
            } else if data[..2] != MAGIC {
                TokenError::Magic
            } else {
                assert_ne!(data[2], VERSION, "a well-formed token was refused");
                TokenError::Version(data[2])
            };
            assert_eq!(e, expected);
            return;
        }
    };
    assert_eq!(token.as_bytes(), data);
    assert_eq!(&data[..2], &MAGIC);
    assert_eq!(data[2], VERSION);

    let claims = token.claims();
    let key = ppn_ledger::token::TokenKey::new(&[0u8; 32]);
    let tag_ok = token.tag_ok(&key);

    // The claims are the token's fields, losslessly: issuing them again gives the same signed
    // bytes (an unknown resource type survives as `Unknown(n)`), and the tag checks exactly when
    // it is the one `issue` computes under the same key.
    let reissued = TokenBytes::issue(&key, &claims);
    assert_eq!(&reissued.as_bytes()[..SIGNED_LEN], &data[..SIGNED_LEN]);
    assert_eq!(reissued.claims(), claims);
    assert_eq!(tag_ok, reissued.tag == token.tag);
    assert!(reissued.tag_ok(&key));
});
