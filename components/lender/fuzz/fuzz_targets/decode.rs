//! Arbitrary bytes as a lender journal payload (byte 0 the record kind): `Entry::decode` must
//! return, never panic, and whatever it accepts must re-encode to the same bytes.
//! `ppn_lender::fuzz_decode` asserts both.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppn_lender::fuzz_decode(data);
});
