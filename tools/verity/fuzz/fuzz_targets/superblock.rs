//! Feeds arbitrary bytes to the verity superblock parser (`ppn_verity::read_superblock`): it must
//! never panic, and a superblock it accepts must re-encode to the same 512 bytes
//! (`fuzz_superblock` asserts this). `fuzz_superblock` also takes the bytes as changes to a valid
//! superblock, so the fuzzer explores near-valid ones too.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    ppn_verity::fuzz_superblock(data);
});
