//! Feeds arbitrary bytes to the TCB's decoding path: the COBS deframer, the frame checks and
//! every body decoder. `ppn_wire::fuzz_decode` must return, never panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    let _ = ppn_wire::fuzz_decode(data);
});
