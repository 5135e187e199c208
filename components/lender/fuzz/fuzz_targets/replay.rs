//! Arbitrary entries as a lender journal (bytes 0..2 a capacity, then `kind | len u16 | payload`
//! records after an OPEN): opening must refuse with an error or build a consistent state that
//! reopens identically and drains when everything expires and is scrubbed.
//! `ppn_lender::fuzz_replay` asserts all of it.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppn_lender::fuzz_replay(data);
});
