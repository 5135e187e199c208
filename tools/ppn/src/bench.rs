//! `ppn bench ...`: benchmarks of the ledger core, run in this process, and of round trips to a
//! running TCB (`ppn bench tcb`). Release builds give the numbers in `docs/benchmarks.md`.

use clap::Subcommand;
use ppn_bench::{RevocationOpts, TokensOpts};
use ppn_tcb_client::blocking::Client;
use ppn_tcb_client::{ClientError, DEFAULT_TIMEOUT};
use ppn_wire::ByteArray;
use ppn_wire::service::{NodeId, Platform, ResourceType, Verdict};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

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
    /// Round trips through the wire protocol to running TCBs (a `ppn-tcb`, or an seL4 image's
    /// link): p50 and p99 of grant issue and token verify, per socket, and the ratios to the first.
    Tcb {
        /// A TCB's Unix socket; repeat to compare backends in one run (ratios are to the first).
        /// Issues grants to a made-up node on each: point it at a test node.
        #[arg(long = "socket", value_name = "PATH", env = "PPN_TCB_SOCKET", required = true)]
        sockets: Vec<PathBuf>,
        /// Timed round trips of each kind per socket (after a few untimed ones).
        #[arg(long, default_value_t = 1000)]
        requests: usize,
        /// One JSON object per socket per line, then one line of ratios per socket after the first.
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    let (value, json) = match command {
        Command::Tcb { sockets, requests, json } => return tcb(&sockets, requests, json),
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

/// Untimed round trips of each kind per socket before the timed ones.
const WARMUP: usize = 10;
/// Timed round trips of one kind in a row, before moving on to the next kind and socket.
const ROUND: usize = 50;
/// The grantee of the bench's grants: a made-up node ("ppnbench"), never revoked by the bench.
const GRANTEE: NodeId = NodeId(ByteArray(*b"ppnbench"));
/// The resource of the bench's grants: `vm:` this.
const RESOURCE_ID: u64 = 0xbe9c;
/// How long the bench's grants are valid.
const VALID_S: u64 = 3600;

/// One TCB under test: its connection, a token it issued, and the timed round trips (µs).
#[derive(Debug)]
struct Backend<'a> {
    socket: &'a Path,
    client: Client,
    platform: Platform,
    token: Vec<u8>,
    expires_unix_s: u64,
    verify_us: Vec<f64>,
    issue_us: Vec<f64>,
}

impl<'a> Backend<'a> {
    /// Connects, asks Node Status for the platform, issues the token to verify and checks it is
    /// `Valid`, then warms up.
    fn open(socket: &'a Path, expires_unix_s: u64, requests: usize) -> Result<Self, String> {
        let at = |e: ClientError| crate::at(socket, e);
        let mut client = Client::connect(socket, DEFAULT_TIMEOUT).map_err(at)?;
        let platform = client.status().map_err(at)?.platform;
        let grant = client.issue_grant(GRANTEE, ResourceType::Vm, RESOURCE_ID, expires_unix_s).map_err(at)?;
        let token = grant.token.to_vec();
        let mut b = Self {
            socket,
            client,
            platform,
            token,
            expires_unix_s,
            verify_us: Vec::with_capacity(requests),
            issue_us: Vec::with_capacity(requests),
        };
        for _ in 0..WARMUP {
            b.verify()?;
            b.issue()?;
        }
        Ok(b)
    }

    /// One verify round trip of the token, in µs; anything but `Valid` is an error.
    fn verify(&mut self) -> Result<f64, String> {
        let start = Instant::now();
        let verdict = self.client.verify_token(&self.token);
        let us = start.elapsed().as_secs_f64() * 1e6;
        match verdict.map_err(|e| crate::at(self.socket, e))? {
            Verdict::Valid => Ok(us),
            v => Err(format!("TCB at {}: a token it issued verified as {v:?}, not Valid", self.socket.display())),
        }
    }

    /// One issue round trip, in µs.
    fn issue(&mut self) -> Result<f64, String> {
        let start = Instant::now();
        let grant = self.client.issue_grant(GRANTEE, ResourceType::Vm, RESOURCE_ID, self.expires_unix_s);
        let us = start.elapsed().as_secs_f64() * 1e6;
        grant.map_err(|e| crate::at(self.socket, e))?;
        Ok(us)
    }

    /// Times `n` verifies, then `n` issues. One untimed verify first: the TCB was idle while the
    /// other sockets were timed, and its first answer after that pays for waking up.
    fn time(&mut self, n: usize) -> Result<(), String> {
        self.verify()?;
        for _ in 0..n {
            let us = self.verify()?;
            self.verify_us.push(us);
        }
        for _ in 0..n {
            let us = self.issue()?;
            self.issue_us.push(us);
        }
        Ok(())
    }

    fn result(&self) -> TcbResult {
        TcbResult {
            socket: self.socket.display().to_string(),
            backend: platform_name(self.platform),
            requests: self.verify_us.len(),
            verify: Percentiles::of(&self.verify_us),
            issue: Percentiles::of(&self.issue_us),
        }
    }
}

/// The nearest-rank p50 and p99 of some samples, in µs.
#[derive(Debug, Clone, Copy, PartialEq)]
struct Percentiles {
    p50: f64,
    p99: f64,
}

impl Percentiles {
    fn of(samples: &[f64]) -> Self {
        let mut s = samples.to_vec();
        s.sort_by(f64::total_cmp);
        Self { p50: nearest_rank(&s, 0.50), p99: nearest_rank(&s, 0.99) }
    }
}

/// The smallest sample with at least `p` of the samples at or below it (`sorted` not empty).
fn nearest_rank(sorted: &[f64], p: f64) -> f64 {
    let rank = (p * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[derive(Debug)]
struct TcbResult {
    socket: String,
    backend: String,
    requests: usize,
    verify: Percentiles,
    issue: Percentiles,
}

/// The short name of a platform, as `ppn tcb status --json` prints it.
fn platform_name(p: Platform) -> String {
    match p {
        Platform::Hosted => "hosted".into(),
        Platform::Sel4Microkit => "sel4-microkit".into(),
        Platform::Unknown(n) => format!("unknown({n})"),
    }
}

fn round(x: f64, decimals: i32) -> f64 {
    let scale = 10f64.powi(decimals);
    (x * scale).round() / scale
}

/// One JSON object with its keys in the order given (serde_json's map would sort them).
fn json_line(pairs: &[(&str, serde_json::Value)]) -> String {
    let fields: Vec<String> = pairs.iter().map(|(k, v)| format!("{}:{v}", serde_json::Value::from(*k))).collect();
    format!("{{{}}}", fields.join(","))
}

/// `ppn bench tcb`: opens every socket first (so a missing one fails before anything is timed),
/// then times rounds of [`ROUND`] verifies and [`ROUND`] issues on each socket in turn, so that a
/// noisy moment of the machine hits every backend alike.
fn tcb(sockets: &[PathBuf], requests: usize, json: bool) -> Result<ExitCode, String> {
    if requests == 0 {
        return Err("--requests must be at least 1".into());
    }
    let now = SystemTime::now().duration_since(UNIX_EPOCH).map_err(|e| format!("system clock: {e}"))?.as_secs();
    let expires_unix_s = now + VALID_S;
    let mut backends =
        sockets.iter().map(|s| Backend::open(s, expires_unix_s, requests)).collect::<Result<Vec<_>, _>>()?;
    let mut done = 0;
    while done < requests {
        let n = ROUND.min(requests - done);
        for b in &mut backends {
            b.time(n)?;
        }
        done += n;
    }
    let results: Vec<TcbResult> = backends.iter().map(Backend::result).collect();
    print!("{}", if json { tcb_json(&results) } else { tcb_text(&results) });
    Ok(ExitCode::SUCCESS)
}

/// `b / a`, of p50s.
fn ratios(a: &TcbResult, b: &TcbResult) -> (f64, f64) {
    (b.verify.p50 / a.verify.p50, b.issue.p50 / a.issue.p50)
}

fn tcb_json(results: &[TcbResult]) -> String {
    let mut out = String::new();
    for r in results {
        out += &json_line(&[
            ("backend", r.backend.clone().into()),
            ("requests", r.requests.into()),
            ("verify_us_p50", round(r.verify.p50, 2).into()),
            ("issue_us_p50", round(r.issue.p50, 2).into()),
            ("socket", r.socket.clone().into()),
            ("verify_us_p99", round(r.verify.p99, 2).into()),
            ("issue_us_p99", round(r.issue.p99, 2).into()),
        ]);
        out.push('\n');
    }
    if let Some((first, rest)) = results.split_first() {
        for r in rest {
            let (verify, issue) = ratios(first, r);
            out += &json_line(&[
                ("ratio_verify", round(verify, 3).into()),
                ("ratio_issue", round(issue, 3).into()),
                ("socket", r.socket.clone().into()),
                ("baseline", first.socket.clone().into()),
            ]);
            out.push('\n');
        }
    }
    out
}

fn tcb_text(results: &[TcbResult]) -> String {
    let w = results.iter().map(|r| r.socket.len()).chain(["socket".len()]).max().unwrap_or(0);
    let mut out = format!(
        "{:<w$}  {:<13}  {:>8}  {:>13}  {:>13}  {:>12}  {:>12}\n",
        "socket", "backend", "requests", "verify p50 us", "verify p99 us", "issue p50 us", "issue p99 us"
    );
    for r in results {
        out += &format!(
            "{:<w$}  {:<13}  {:>8}  {:>13.2}  {:>13.2}  {:>12.2}  {:>12.2}\n",
            r.socket, r.backend, r.requests, r.verify.p50, r.verify.p99, r.issue.p50, r.issue.p99
        );
    }
    if let Some((first, rest)) = results.split_first()
        && !rest.is_empty()
    {
        out += &format!("p50 ratios to {} ({}):\n", first.socket, first.backend);
        for r in rest {
            let (verify, issue) = ratios(first, r);
            out += &format!("{:<w$}  {:<13}  verify {verify:.3}  issue {issue:.3}\n", r.socket, r.backend);
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nearest_rank_percentiles() {
        let s: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(Percentiles::of(&s), Percentiles { p50: 50.0, p99: 99.0 });
        assert_eq!(Percentiles::of(&[3.0]), Percentiles { p50: 3.0, p99: 3.0 });
        assert_eq!(Percentiles::of(&[4.0, 1.0, 3.0, 2.0]), Percentiles { p50: 2.0, p99: 4.0 });
    }

    #[test]
    fn json_keeps_the_promised_key_order_and_adds_ratios_after_the_first() {
        let r = |socket: &str, v: f64, i: f64| TcbResult {
            socket: socket.into(),
            backend: "hosted".into(),
            requests: 7,
            verify: Percentiles { p50: v, p99: v * 2.0 },
            issue: Percentiles { p50: i, p99: i * 2.0 },
        };
        let out = tcb_json(&[r("/a", 10.0, 20.0), r("/b", 25.0, 10.0)]);
        let lines: Vec<&str> = out.lines().collect();
        assert_eq!(
            lines[0],
            r#"{"backend":"hosted","requests":7,"verify_us_p50":10.0,"issue_us_p50":20.0,"socket":"/a","verify_us_p99":20.0,"issue_us_p99":40.0}"#
        );
        assert_eq!(lines[2], r#"{"ratio_verify":2.5,"ratio_issue":0.5,"socket":"/b","baseline":"/a"}"#);
        assert_eq!(lines.len(), 3);
        assert_eq!(tcb_json(&[r("/a", 1.0, 1.0)]).lines().count(), 1);
    }
}
