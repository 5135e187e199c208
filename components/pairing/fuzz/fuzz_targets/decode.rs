//! Feeds arbitrary bytes to the pairing decoders and, when they decode, to the state machine
//! that expects them (CPace on an arbitrary point, key confirmation). `ppn_pairing::fuzz_decode`
//! must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppn_pairing::fuzz_decode(data);
});
