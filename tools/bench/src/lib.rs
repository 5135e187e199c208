//! `ppn-bench`: benchmarks of the capability ledger (`ppn-ledger`), run through its real API.
//!
//! - [`tokens()`]: issue and verify of the 60-byte HMAC tokens against a ledger holding many
//!   revocations (and an empty one), next to the full verify path of an equivalent Biscuit.
//! - [`revocation()`]: a deterministic discrete-event simulation of a fleet of real
//!   [`ppn_ledger::Ledger`]s gossiping a node revocation over lossy links: how long until every
//!   node refuses the revoked node, and how many messages it took.
//!
//! - [`place()`]: the scheduler placing a batch of VMs on a large uniform fleet, next to a
//!   linear-scan best fit, and the nodes it uses against the lower bound.
//!
//! Each returns JSON; `ppn bench tokens|revocation|attest|place` runs them. `docs/benchmarks.md` explains the
//! numbers.
#![forbid(unsafe_code)]

pub mod attest;
pub mod place;
pub mod revocation;
pub mod tokens;

pub use attest::{AttestOpts, attest};
pub use place::{PlaceOpts, place};
pub use revocation::{RevocationOpts, RevocationReport, revocation, simulate};
pub use tokens::{TokensOpts, tokens};

/// A small, seeded PRNG (xoshiro256**, seeded by SplitMix64): the benches must not depend on
/// an outside source of randomness, so that one seed always gives one result.
#[derive(Debug, Clone)]
pub struct Rng([u64; 4]);

impl Rng {
    pub fn new(seed: u64) -> Self {
        let mut x = seed;
        let mut next = || {
            x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
            let mut z = x;
            z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
            z ^ (z >> 31)
        };
        Rng([next(), next(), next(), next()])
    }

    pub fn next_u64(&mut self) -> u64 {
        let s = &mut self.0;
        let out = s[1].wrapping_mul(5).rotate_left(7).wrapping_mul(9);
        let t = s[1] << 17;
        s[2] ^= s[0];
        s[3] ^= s[1];
        s[1] ^= s[2];
        s[0] ^= s[3];
        s[2] ^= t;
        s[3] = s[3].rotate_left(45);
        out
    }

    /// Uniform in `0..n` (`n > 0`), by multiply-shift.
    pub fn below(&mut self, n: usize) -> usize {
        ((u128::from(self.next_u64()) * n as u128) >> 64) as usize
    }

    /// Uniform in `[0, 1)`.
    pub fn unit(&mut self) -> f64 {
        (self.next_u64() >> 11) as f64 / (1u64 << 53) as f64
    }

    pub fn bytes<const N: usize>(&mut self) -> [u8; N] {
        let mut out = [0u8; N];
        for chunk in out.chunks_mut(8) {
            chunk.copy_from_slice(&self.next_u64().to_le_bytes()[..chunk.len()]);
        }
        out
    }
}

/// Rounds to `places` decimals, so the JSON shows meaningful digits only.
pub(crate) fn round(x: f64, places: i32) -> f64 {
    let m = 10f64.powi(places);
    (x * m).round() / m
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rng_is_seeded_and_uniform_enough() {
        let a: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        let b: Vec<u64> = (0..8)
            .map({
                let mut r = Rng::new(7);
                move |_| r.next_u64()
            })
            .collect();
        assert_eq!(a, b);
        let mut r = Rng::new(8);
        let mut counts = [0u32; 10];
        for _ in 0..10_000 {
            counts[r.below(10)] += 1;
        }
        assert!(counts.iter().all(|&c| (800..1200).contains(&c)), "{counts:?}");
    }
}
