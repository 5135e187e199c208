//! Feeds arbitrary bytes to the gossip datagram decoder, as a hostile peer's proxy could send
//! them through the tunnel. `ppn_gossip::msg::fuzz_decode` must return, never panic, and what
//! decodes must re-encode to the same bytes.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ppn_gossip::msg::fuzz_decode(data);
});
