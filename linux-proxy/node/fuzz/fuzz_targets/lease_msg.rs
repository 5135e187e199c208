//! Feeds arbitrary bytes to the lease protocol's decoder, as a hostile peer's proxy could send
//! them through the tunnel to mesh port 7003. `ppn_node::lease_wire::fuzz_decode` must return,
//! never panic, and what decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ppn_node::lease_wire::fuzz_decode(data);
});
