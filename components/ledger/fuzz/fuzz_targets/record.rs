//! Arbitrary bytes as a ledger record: `Record::decode` must return, never panic; and whatever it
//! accepts is canonical: its `bytes` are the input, its parents are strictly ascending, it decodes
//! again to an equal record, its id is the SHA-256 of the bytes, and signing its decoded fields
//! again gives back the input's bytes up to the signature.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppn_ledger::record::{MAGIC, MAX_PARENTS, MAX_RECORD_LEN, VERSION};
use ppn_ledger::{Body, Record};
use ppn_node_core::NodeKeys;
use sha2::{Digest as _, Sha256};
use std::sync::OnceLock;

const SIG_LEN: usize = 64;

/// A fixed key to sign the decoded fields with; derived once, not per input.
fn keys() -> &'static NodeKeys {
    static KEYS: OnceLock<NodeKeys> = OnceLock::new();
    KEYS.get_or_init(|| NodeKeys::from_seed(&[7; 32]))
}

fuzz_target!(|data: &[u8]| {
    let Ok(r) = Record::decode(data) else { return };

    assert_eq!(r.bytes, data);
    assert!(data.len() <= MAX_RECORD_LEN);
    assert_eq!((&data[..2], data[2]), (&MAGIC[..], VERSION));
    assert!(r.parents.len() <= MAX_PARENTS);
    assert!(r.parents.windows(2).all(|w| w[0] < w[1]), "parents not strictly ascending: {:?}", r.parents);
    if let Body::GrantRevoked { first, last, .. } = r.body {
        assert!(first <= last);
    }
    assert_eq!(r.id.0, <[u8; 32]>::from(Sha256::digest(data)));
    assert_eq!(&r.signature[..], &data[data.len() - SIG_LEN..]);
    assert_eq!(Record::decode(&r.bytes).as_ref(), Ok(&r));

    // The decoded fields are the bytes, losslessly: the encoder writes the same bytes from them.
    let keys = keys();
    let resigned = Record::sign(keys.signing_key(), r.author, r.created_unix_s, &r.parents, r.body);
    let signed = data.len() - SIG_LEN;
    assert_eq!(resigned.bytes.len(), data.len());
    assert_eq!(&resigned.bytes[..signed], &data[..signed]);
    assert_eq!(
        (resigned.author, resigned.created_unix_s, &resigned.parents, resigned.body),
        (r.author, r.created_unix_s, &r.parents, r.body)
    );

    // Checking the signature never panics; the encoder's own signature checks, and Ed25519
    // signing is deterministic, so the input's signature checks if it is that one.
    let vk = keys.signing_key().verifying_key();
    assert!(resigned.signature_ok(&vk));
    let ok = r.signature_ok(&vk);
    if r.signature == resigned.signature {
        assert!(ok);
    }
});
