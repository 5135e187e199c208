//! `ppn-bench`: benchmarks of the capability ledger (`ppn-ledger`), run through its real API.
//!
//! - [`tokens()`]: issue and verify of the 60-byte HMAC tokens against a ledger holding many
//!   revocations (and an empty one), next to the full verify path of an equivalent Biscuit.
//! - [`revocation()`]: a deterministic discrete-event simulation of a fleet of real
//!   [`ppn_ledger::Ledger`]s gossiping a node revocation over lossy links: how long until every
//!   node refuses the revoked node, and how many messages it took.
//!
//! Both return JSON; [`cli`] parses the command line of the `ppn-bench` binary (and of
//! `ppn bench`). `docs/benchmarks.md` explains the numbers.
#![forbid(unsafe_code)]

pub mod revocation;
pub mod tokens;

pub use revocation::{RevocationOpts, RevocationReport, revocation, simulate};
pub use tokens::{TokensOpts, tokens};

/// Usage of [`cli`].
pub const USAGE: &str = "\
usage: ppn-bench tokens [--revocations N] [--batches N] [--iters N] [--biscuit-iters N]
       ppn-bench revocation [--nodes N] [--link-ms MS] [--loss P] [--seed S]
                            [--fanout F] [--period-ms MS] [--revocations R]";

/// Runs the bench named by `args[0]` (`tokens` or `revocation`) with the options that follow.
/// Unset options keep their defaults ([`TokensOpts::default`], [`RevocationOpts::default`]).
pub fn cli(args: &[String]) -> Result<serde_json::Value, String> {
    let Some((cmd, rest)) = args.split_first() else { return Err(USAGE.into()) };
    let pairs = flag_pairs(rest)?;
    match cmd.as_str() {
        "tokens" => {
            let mut o = TokensOpts::default();
            for (flag, v) in pairs {
                match flag {
                    "--revocations" => o.revocations = parse(flag, v)?,
                    "--batches" => o.batches = parse(flag, v)?,
                    "--iters" => o.iters = parse(flag, v)?,
                    "--biscuit-iters" => o.biscuit_iters = parse(flag, v)?,
                    _ => return Err(format!("unknown option {flag} for tokens\n{USAGE}")),
                }
            }
            if o.batches == 0 || o.iters == 0 || o.biscuit_iters == 0 {
                return Err("--batches, --iters and --biscuit-iters must be at least 1".into());
            }
            Ok(tokens(&o))
        }
        "revocation" => {
            let mut o = RevocationOpts::default();
            for (flag, v) in pairs {
                match flag {
                    "--nodes" => o.nodes = parse(flag, v)?,
                    "--link-ms" => o.link_ms = parse(flag, v)?,
                    "--loss" => o.loss = parse(flag, v)?,
                    "--seed" => o.seed = parse(flag, v)?,
                    "--fanout" => o.fanout = parse(flag, v)?,
                    "--period-ms" => o.period_ms = parse(flag, v)?,
                    "--revocations" => o.revocations = parse(flag, v)?,
                    _ => return Err(format!("unknown option {flag} for revocation\n{USAGE}")),
                }
            }
            o.check()?;
            Ok(revocation(&o))
        }
        "-h" | "--help" | "help" => Err(USAGE.into()),
        other => Err(format!("unknown bench {other:?}\n{USAGE}")),
    }
}

fn flag_pairs(rest: &[String]) -> Result<Vec<(&str, &str)>, String> {
    let mut out = Vec::new();
    let mut it = rest.iter();
    while let Some(flag) = it.next() {
        // Both `--flag value` and `--flag=value`.
        if let Some((f, v)) = flag.split_once('=') {
            out.push((f, v));
            continue;
        }
        let Some(v) = it.next() else { return Err(format!("{flag} needs a value\n{USAGE}")) };
        out.push((flag.as_str(), v.as_str()));
    }
    Ok(out)
}

fn parse<T: std::str::FromStr>(flag: &str, v: &str) -> Result<T, String> {
    v.parse().map_err(|_| format!("{flag}: cannot parse {v:?}"))
}

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

    fn args(s: &str) -> Vec<String> {
        s.split_whitespace().map(String::from).collect()
    }

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

    #[test]
    fn cli_rejects_what_it_does_not_know() {
        assert!(cli(&[]).is_err());
        assert!(cli(&args("nope")).is_err());
        assert!(cli(&args("revocation --nodes")).is_err());
        assert!(cli(&args("revocation --nodes x")).is_err());
        assert!(cli(&args("revocation --bogus 1")).is_err());
        assert!(cli(&args("revocation --nodes 1")).is_err());
        assert!(cli(&args("revocation --loss 1.0")).is_err());
        assert!(cli(&args("tokens --iters 0")).is_err());
    }

    #[test]
    fn cli_runs_a_small_revocation() {
        let v = cli(&args("revocation --nodes 8 --link-ms=2 --loss 0 --seed 3 --revocations 2")).unwrap();
        assert_eq!(v["nodes"], 8);
        assert_eq!(v["revocations"], 2);
        assert_eq!(v["link_ms"], 2.0);
    }
}
