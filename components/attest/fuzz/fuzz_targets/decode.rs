//! Arbitrary bytes as an attestation report, a provisioning statement and a key certificate:
//! the decoders and the verifiers must return, never panic. `ppn_attest::fuzz_decode` also
//! asserts that what decodes decodes again to the same thing.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ppn_attest::fuzz_decode(data);
});
