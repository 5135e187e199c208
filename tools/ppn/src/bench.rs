//! `ppn bench ...`: benchmarks of the ledger core, run in this process (release builds give the
//! numbers in `docs/benchmarks.md`).

use clap::Subcommand;
use ppn_bench::{RevocationOpts, TokensOpts};
use std::process::ExitCode;

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Token issue and verify against a ledger of many revocations, next to Biscuit's verify.
    Tokens {
        /// Revocation records in the ledger, each authored through the ledger's real path.
        #[arg(long, default_value_t = TokensOpts::default().revocations)]
        revocations: usize,
        /// Timed rounds; the median is reported.
        #[arg(long, default_value_t = TokensOpts::default().batches)]
        batches: usize,
        /// Operations per round for issue and verify.
        #[arg(long, default_value_t = TokensOpts::default().iters)]
        iters: usize,
        /// Operations per round for the Biscuit verify path.
        #[arg(long, default_value_t = TokensOpts::default().biscuit_iters)]
        biscuit_iters: usize,
        #[arg(long)]
        json: bool,
    },
    /// A deterministic simulation of a revocation gossiped through a fleet of real ledgers.
    Revocation {
        #[arg(long, default_value_t = RevocationOpts::default().nodes)]
        nodes: usize,
        /// One-way link latency in milliseconds (plus up to 10% jitter).
        #[arg(long, default_value_t = RevocationOpts::default().link_ms)]
        link_ms: f64,
        /// Probability that any one message is lost.
        #[arg(long, default_value_t = RevocationOpts::default().loss)]
        loss: f64,
        #[arg(long, default_value_t = RevocationOpts::default().seed)]
        seed: u64,
        /// Peers a node pushes a new record to.
        #[arg(long, default_value_t = RevocationOpts::default().fanout)]
        fanout: usize,
        /// Anti-entropy period of each node, in milliseconds.
        #[arg(long, default_value_t = RevocationOpts::default().period_ms)]
        period_ms: f64,
        /// Revocations run one after the other.
        #[arg(long, default_value_t = RevocationOpts::default().revocations)]
        revocations: usize,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    let (value, json) = match command {
        Command::Tokens { revocations, batches, iters, biscuit_iters, json } => {
            if batches == 0 || iters == 0 || biscuit_iters == 0 {
                return Err("--batches, --iters and --biscuit-iters must be at least 1".into());
            }
            (ppn_bench::tokens(&TokensOpts { revocations, batches, iters, biscuit_iters }), json)
        }
        Command::Revocation { nodes, link_ms, loss, seed, fanout, period_ms, revocations, json } => {
            let o = RevocationOpts { nodes, link_ms, loss, seed, fanout, period_ms, revocations };
            o.check()?;
            (ppn_bench::revocation(&o), json)
        }
    };
    if json {
        println!("{value}");
    } else {
        let obj = value.as_object().ok_or("bench returned no object")?;
        for (k, v) in obj {
            println!("{k:>24}  {v}");
        }
    }
    Ok(ExitCode::SUCCESS)
}
