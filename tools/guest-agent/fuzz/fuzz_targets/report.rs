//! Feeds arbitrary bytes, in chunks whose size the input picks, to the host's report decoder
//! (`ppn_guest_agent::report::Decoder`): it must never panic, must account for every byte (in a
//! report, skipped, or buffered) and must hold less than one frame at the end
//! (`fuzz_stream` asserts these), and `Report::decode` must agree with it on any prefix.
#![no_main]

use libfuzzer_sys::fuzz_target;
use ppn_guest_agent::report::{Report, fuzz_stream};

fuzz_target!(|data: &[u8]| {
    let _ = fuzz_stream(data);
    let _ = Report::decode(data);
});
