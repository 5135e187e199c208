//! `ppn bench ...`: benchmarks of the ledger core, run in this process; of round trips to a
//! running TCB (`ppn bench tcb`); of a revocation through a real local fleet
//! (`ppn bench mesh-revocation`); and of the mesh tunnel's throughput (`ppn bench tunnel`).
//! Release builds give the numbers in `docs/benchmarks.md`.

use clap::Subcommand;
use ppn_bench::{AttestOpts, PlaceOpts, RevocationOpts, TokensOpts};
use ppn_node::fleet::{self, Fleet, FleetNode, UpOptions};
use ppn_tcb_client::blocking::Client;
use ppn_tcb_client::{ClientError, DEFAULT_TIMEOUT};
use ppn_wire::ByteArray;
use ppn_wire::service::{NodeId, Platform, ResourceType, RevokeTarget, Verdict};
use std::path::{Path, PathBuf};
use std::process::ExitCode;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, mpsc};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Signing an attestation report and checking one offline (the whole chain: two key
    /// certificates, the provisioning statement, the report), next to one bare Ed25519 verify.
    Attest {
        #[arg(long, default_value_t = AttestOpts::default().batches)]
        batches: usize,
        #[arg(long, default_value_t = AttestOpts::default().iters)]
        iters: usize,
        #[arg(long)]
        json: bool,
    },
    /// The scheduler placing a batch of VMs (5% pinned) on a uniform fleet, next to a
    /// linear-scan best fit in the same run; nodes used against the lower bound.
    Place {
        #[arg(long, default_value_t = PlaceOpts::default().nodes)]
        nodes: usize,
        #[arg(long, default_value_t = PlaceOpts::default().vms)]
        vms: usize,
        /// Share of the VMs pinned to a random node.
        #[arg(long, default_value_t = PlaceOpts::default().pinned)]
        pinned: f64,
        /// Timed runs; the figures are medians.
        #[arg(long, default_value_t = PlaceOpts::default().rounds)]
        rounds: usize,
        #[arg(long, default_value_t = PlaceOpts::default().seed)]
        seed: u64,
        #[arg(long)]
        json: bool,
    },
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
    /// A revocation through a real local fleet: `ppn-tcb` and `ppn-node` processes, WireGuard on
    /// loopback, gossip. Revokes made-up nodes at node 0's TCB and times until every node's TCB
    /// reports each one. Starts its own fleet in a temporary directory and stops it at the end.
    MeshRevocation {
        /// Nodes in the fleet (each a `ppn-tcb` and a `ppn-node`, found next to this `ppn`).
        #[arg(long, default_value_t = 8)]
        nodes: usize,
        /// Revocations, one after the other; the percentiles are over them.
        #[arg(long, default_value_t = 20)]
        runs: usize,
        /// Every node's mesh drops this fraction of its outgoing datagrams (`ppn-node --loss`).
        #[arg(long, default_value_t = 0.0)]
        loss: f64,
        #[arg(long)]
        json: bool,
    },
    /// Bulk TCP throughput through the mesh tunnel (WireGuard + smoltcp, two meshes on
    /// loopback), next to kernel TCP on loopback (`ppn_mesh::bench_tunnel`).
    Tunnel {
        /// Payload sent through each, in MiB.
        #[arg(long, default_value_t = 64)]
        mib: usize,
        #[arg(long)]
        json: bool,
    },
    /// A node of a 3-node emulated fleet revoked with VMs on it (`ppn node revoke`): the
    /// revocation to every other TCB refusing the node, and to its last VM running elsewhere.
    /// Starts the fleet and the guests in a temporary directory, stops them at the end.
    Evacuate {
        /// Unpinned VMs on the node that is revoked.
        #[arg(long, default_value_t = 2)]
        vms: usize,
        /// Each VM's memory, MiB.
        #[arg(long, default_value_t = 256)]
        mem: u64,
        /// Data directory of the guest image cache (DIR/ppn-guest).
        #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// Growing a VM through the fabric (lease, TCB check, virtio-mem plug) next to a bare QMP
    /// plug of the same kind of guest: request until the guest's MemTotal shows it, medians.
    /// Starts a 2-node fleet and a bare QEMU in a temporary directory, stops them at the end.
    Plug {
        /// MiB plugged each round (a multiple of 2).
        #[arg(long, default_value_t = 1024)]
        mib: u64,
        /// Rounds (plug, then unplug again), fabric and bare taking turns.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Data directory of the guest image cache (DIR/ppn-guest).
        #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
    /// A live migration through the fabric (grant, mesh tunnel) next to a plain QEMU-to-QEMU
    /// migration on loopback of the same kind of guest: downtime and totals (docs/migration.md).
    /// Starts a 2-node fleet and bare QEMUs in a temporary directory, stops them at the end.
    Migrate {
        /// Boot memory of the guest, MiB.
        #[arg(long, default_value_t = 512)]
        mem: u64,
        /// How the fabric's stream crosses the mesh (`zstd` or `plain`).
        #[arg(long, default_value = "zstd", value_parser = ["zstd", "plain"])]
        encoding: String,
        /// Migrations of each kind (back and forth); the headline figures are medians.
        #[arg(long, default_value_t = 3)]
        rounds: usize,
        /// Data directory of the guest image cache (DIR/ppn-guest).
        #[arg(long, env = "PPN_DATA_DIR", default_value = "target")]
        data_dir: PathBuf,
        #[arg(long)]
        json: bool,
    },
}

pub fn run(command: Command) -> Result<ExitCode, String> {
    let (value, json) = match command {
        Command::Tcb { sockets, requests, json } => return tcb(&sockets, requests, json),
        Command::MeshRevocation { nodes, runs, loss, json } => return mesh_revocation(nodes, runs, loss, json),
        Command::Tunnel { mib, json } => return tunnel(mib, json),
        Command::Migrate { mem, encoding, rounds, data_dir, json } => {
            let opts = crate::bench_migrate::MigrateOpts { mem, encoding, rounds, data_dir };
            return crate::bench_migrate::migrate(&opts, json);
        }
        Command::Evacuate { vms, mem, data_dir, json } => {
            return crate::bench_evacuate::evacuate(&crate::bench_evacuate::EvacuateOpts { vms, mem, data_dir }, json);
        }
        Command::Plug { mib, rounds, data_dir, json } => {
            return crate::bench_plug::plug(&crate::bench_plug::PlugOpts { mib, rounds, data_dir }, json);
        }
        Command::Attest { batches, iters, json } => {
            if batches == 0 || iters == 0 {
                return Err("--batches and --iters must be at least 1".into());
            }
            (ppn_bench::attest(&AttestOpts { batches, iters }), json)
        }
        Command::Place { nodes, vms, pinned, rounds, seed, json } => {
            let o = PlaceOpts { nodes, vms, pinned, rounds, seed };
            o.check()?;
            (ppn_bench::place(&o), json)
        }
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

/// `ppn bench mesh-revocation`: how long the poll of every TCB waits between two looks.
const POLL: Duration = Duration::from_micros(500);
/// A revocation not seen by every TCB within this long fails the bench.
const RUN_LIMIT: Duration = Duration::from_secs(30);
/// How long to wait for a fresh fleet to settle (every node sees every other up).
const SETTLE: Duration = Duration::from_secs(60);
/// Target without loss: p99 under this many ms.
const TARGET_P99_MS: f64 = 100.0;
/// Target with loss: max under this many ms.
const TARGET_LOSSY_MAX_MS: f64 = 1000.0;

/// What `mesh-revocation` measured: per run, from just before the revoke call at node 0 until
/// the last TCB of the fleet reported the revocation; and the revoke call alone.
#[derive(Debug, Clone, PartialEq)]
struct MeshRevocationResult {
    nodes: usize,
    loss: f64,
    samples_ms: Vec<f64>,
    revoke_call_ms: Vec<f64>,
}

impl MeshRevocationResult {
    fn sorted(&self) -> Vec<f64> {
        let mut s = self.samples_ms.clone();
        s.sort_by(f64::total_cmp);
        s
    }

    fn p50_p99_max(&self) -> (f64, f64, f64) {
        let s = self.sorted();
        (nearest_rank(&s, 0.50), nearest_rank(&s, 0.99), s.last().copied().unwrap_or(f64::NAN))
    }

    /// The median revoke call alone.
    fn revoke_call_p50(&self) -> f64 {
        let mut calls = self.revoke_call_ms.clone();
        calls.sort_by(f64::total_cmp);
        nearest_rank(&calls, 0.5)
    }

    /// The target for these conditions, and whether it was met.
    fn target(&self) -> (String, bool) {
        let (_, p99, max) = self.p50_p99_max();
        if self.loss > 0.0 {
            (format!("max_ms < {TARGET_LOSSY_MAX_MS}"), max < TARGET_LOSSY_MAX_MS)
        } else {
            (format!("p99_ms < {TARGET_P99_MS}"), p99 < TARGET_P99_MS)
        }
    }

    fn json(&self) -> String {
        let (p50, p99, max) = self.p50_p99_max();
        let (target, met) = self.target();
        let ms = |v: &[f64]| serde_json::Value::from(v.iter().map(|x| round(*x, 3)).collect::<Vec<f64>>());
        json_line(&[
            ("nodes", self.nodes.into()),
            ("runs", self.samples_ms.len().into()),
            ("p50_ms", round(p50, 3).into()),
            ("p99_ms", round(p99, 3).into()),
            ("max_ms", round(max, 3).into()),
            ("loss", self.loss.into()),
            ("target", target.into()),
            ("target_met", met.into()),
            ("revoke_call_ms_p50", round(self.revoke_call_p50(), 3).into()),
            ("samples_ms", ms(&self.samples_ms)),
        ])
    }

    fn text(&self) -> String {
        let (p50, p99, max) = self.p50_p99_max();
        let (target, met) = self.target();
        let samples: Vec<String> = self.samples_ms.iter().map(|x| format!("{x:.1}")).collect();
        format!(
            "mesh revocation: {} nodes (ppn-tcb + ppn-node each, WireGuard on loopback), loss {}, {} runs\n\
             from just before the revoke call at node 0 until every node's TCB reports it:\n\
             \x20 p50 {p50:.3} ms   p99 {p99:.3} ms   max {max:.3} ms\n\
             \x20 the revoke call itself: p50 {:.3} ms\n\
             \x20 runs (ms): {}\n\
             target {target}: {}\n",
            self.nodes,
            self.loss,
            self.samples_ms.len(),
            self.revoke_call_p50(),
            samples.join(" "),
            if met { "met" } else { "NOT met" },
        )
    }
}

/// `ppn bench mesh-revocation`: starts a fleet in a fresh temporary directory, times `runs`
/// revocations through it, and stops it whatever happened (on failure the directory, with every
/// node's logs, is kept and named in the error).
fn mesh_revocation(nodes: usize, runs: usize, loss: f64, json: bool) -> Result<ExitCode, String> {
    if nodes < 2 {
        return Err("--nodes must be at least 2".into());
    }
    if runs == 0 {
        return Err("--runs must be at least 1".into());
    }
    if !(0.0..1.0).contains(&loss) {
        return Err("--loss must be in [0, 1)".into());
    }
    let opts = UpOptions { loss, settle: SETTLE, ..crate::fleet::up_options(nodes, 0)? };
    let tmp = tempfile::Builder::new()
        .prefix("ppn-bench-mesh.")
        .tempdir()
        .map_err(|e| format!("temporary directory: {e}"))?;
    let dir = tmp.path().join("fleet");
    // Its own thread: `fleet::up` needs a runtime of its own, and this one runs inside `ppn`'s.
    let measured = std::thread::scope(|s| s.spawn(|| fleet_and_measure(&dir, &opts, runs)).join())
        .unwrap_or_else(|_| Err("the bench thread panicked".into()));
    let stopped = if dir.join(fleet::FLEET_JSON).exists() { fleet::down(&dir, measured.is_ok()) } else { Ok(0) };
    match (measured, stopped) {
        (Ok(samples), Ok(_)) => {
            let result = MeshRevocationResult { nodes, loss, samples_ms: samples.0, revoke_call_ms: samples.1 };
            print!("{}", if json { format!("{}\n", result.json()) } else { result.text() });
            Ok(ExitCode::SUCCESS)
        }
        (Ok(_), Err(e)) => Err(format!("stopping the fleet in {}: {e}", tmp.keep().display())),
        (Err(e), stopped) => {
            let kept = tmp.keep();
            let stop = match stopped {
                Ok(_) => "the fleet is stopped".to_owned(),
                Err(s) => format!("stopping the fleet failed too: {s}"),
            };
            Err(format!("{e} ({stop}; its logs are in {})", kept.display()))
        }
    }
}

/// Per run: until the last TCB saw it, and the revoke call alone, in ms.
type Samples = (Vec<f64>, Vec<f64>);

/// Starts the fleet and measures, with SIGINT and SIGTERM caught so that the caller can stop the
/// fleet (its processes run in sessions of their own and would outlive `ppn`).
fn fleet_and_measure(dir: &Path, opts: &UpOptions, runs: usize) -> Result<Samples, String> {
    use tokio::signal::unix::{SignalKind, signal};
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(1)
        .enable_all()
        .build()
        .map_err(|e| format!("async runtime: {e}"))?;
    let interrupted = Arc::new(AtomicBool::new(false));
    {
        let _in = runtime.enter();
        let mut int = signal(SignalKind::interrupt()).map_err(|e| format!("SIGINT: {e}"))?;
        let mut term = signal(SignalKind::terminate()).map_err(|e| format!("SIGTERM: {e}"))?;
        let flag = Arc::clone(&interrupted);
        runtime.spawn(async move {
            tokio::select! {
                _ = int.recv() => {}
                _ = term.recv() => {}
            }
            flag.store(true, Ordering::SeqCst);
        });
    }
    let fleet = runtime.block_on(async {
        let was_interrupted = async {
            while !interrupted.load(Ordering::SeqCst) {
                tokio::time::sleep(Duration::from_millis(20)).await;
            }
        };
        tokio::select! {
            up = fleet::up(dir, opts, |line| eprintln!("ppn bench: {line}")) => up,
            () = was_interrupted => Err("interrupted".to_owned()),
        }
    })?;
    measure(&fleet, runs, &interrupted)
}

/// One TCB's poller: its own connection, and its revoked-node count before the first run.
#[derive(Debug)]
struct Poller<'a> {
    index: usize,
    socket: &'a Path,
    client: Client,
    base: u32,
}

impl Poller<'_> {
    /// For each `(k, t0)`: polls until the TCB counts `k` more revoked nodes than at the start,
    /// and answers the time since `t0`.
    fn run(
        mut self,
        starts: mpsc::Receiver<(u32, Instant)>,
        done: mpsc::Sender<Result<Duration, String>>,
        interrupted: &AtomicBool,
        abort: &AtomicBool,
    ) {
        while let Ok((k, t0)) = starts.recv() {
            let want = self.base.saturating_add(k);
            let seen = loop {
                match self.client.ledger_summary() {
                    Ok(s) if s.revoked_node_count >= want => break Ok(t0.elapsed()),
                    Ok(_) => {}
                    Err(e) => break Err(crate::at(self.socket, e)),
                }
                if interrupted.load(Ordering::SeqCst) {
                    break Err("interrupted".to_owned());
                }
                if abort.load(Ordering::SeqCst) {
                    break Err("aborted".to_owned());
                }
                if t0.elapsed() > RUN_LIMIT {
                    break Err(format!(
                        "node {}'s TCB ({}) did not report revocation {k} within {RUN_LIMIT:?}",
                        self.index,
                        self.socket.display()
                    ));
                }
                std::thread::sleep(POLL);
            };
            if done.send(seen).is_err() {
                return;
            }
        }
    }
}

/// The runs: one poller thread per TCB, each on its own connection; node 0's TCB revokes on
/// another connection.
fn measure(fleet: &Fleet, runs: usize, interrupted: &AtomicBool) -> Result<Samples, String> {
    let connect =
        |n: &FleetNode| Client::connect(&n.tcb_socket, DEFAULT_TIMEOUT).map_err(|e| crate::at(&n.tcb_socket, e));
    let first = fleet.nodes.first().ok_or("the fleet has no node")?;
    let mut revoker = connect(first)?;
    let mut pollers = Vec::new();
    for n in &fleet.nodes {
        let mut client = connect(n)?;
        let base = client.ledger_summary().map_err(|e| crate::at(&n.tcb_socket, e))?.revoked_node_count;
        pollers.push(Poller { index: n.index, socket: &n.tcb_socket, client, base });
    }
    let abort = AtomicBool::new(false);
    std::thread::scope(|s| {
        let (done_tx, done) = mpsc::channel();
        let mut starts = Vec::new();
        for p in pollers {
            let (tx, rx) = mpsc::channel();
            starts.push(tx);
            let done_tx = done_tx.clone();
            let abort = &abort;
            s.spawn(move || p.run(rx, done_tx, interrupted, abort));
        }
        drop(done_tx);
        let result = revocations(&mut revoker, &first.tcb_socket, &starts, &done, runs, interrupted);
        if result.is_err() {
            abort.store(true, Ordering::SeqCst);
        }
        drop(starts);
        result
    })
}

fn revocations(
    revoker: &mut Client,
    socket: &Path,
    starts: &[mpsc::Sender<(u32, Instant)>],
    done: &mpsc::Receiver<Result<Duration, String>>,
    runs: usize,
    interrupted: &AtomicBool,
) -> Result<Samples, String> {
    let (mut samples, mut calls) = (Vec::with_capacity(runs), Vec::with_capacity(runs));
    for k in 1..=runs {
        if interrupted.load(Ordering::SeqCst) {
            return Err("interrupted".into());
        }
        let id = random_bytes()?;
        let node = NodeId(ByteArray(id));
        let k32 = u32::try_from(k).map_err(|_| "too many runs")?;
        // The pollers start first, so they already look when the record lands.
        let t0 = Instant::now();
        for tx in starts {
            tx.send((k32, t0)).map_err(|_| "a poller stopped")?;
        }
        revoker.revoke(RevokeTarget::Node { node }).map_err(|e| crate::at(socket, e))?;
        calls.push(t0.elapsed().as_secs_f64() * 1e3);
        let mut last = Duration::ZERO;
        for _ in starts {
            last = last.max(done.recv().map_err(|_| "the pollers stopped")??);
        }
        let ms = last.as_secs_f64() * 1e3;
        samples.push(ms);
        eprintln!("ppn bench: run {k}/{runs}: node {node} revoked, at every TCB after {ms:.3} ms");
        // A pause of 20 to 83 ms, so the runs do not keep one phase against the nodes' 10 ms
        // watchers, and the last run's pushes are over.
        std::thread::sleep(Duration::from_millis(20 + u64::from(id[0] % 64)));
    }
    Ok((samples, calls))
}

fn random_bytes() -> Result<[u8; 8], String> {
    let mut b = [0u8; 8];
    std::fs::File::open("/dev/urandom")
        .and_then(|mut f| std::io::Read::read_exact(&mut f, &mut b))
        .map_err(|e| format!("/dev/urandom: {e}"))?;
    Ok(b)
}

/// `ppn bench tunnel`: [`ppn_mesh::bench_tunnel`], on a thread of its own (it builds its own
/// runtime, and this one runs inside `ppn`'s).
fn tunnel(mib: usize, json: bool) -> Result<ExitCode, String> {
    if mib == 0 {
        return Err("--mib must be at least 1".into());
    }
    let bytes = mib.checked_mul(1 << 20).ok_or("--mib is too large")?;
    let r = std::thread::scope(|s| s.spawn(|| ppn_mesh::bench_tunnel(bytes)).join())
        .map_err(|_| "the tunnel bench panicked".to_owned())?
        .map_err(|e| format!("tunnel bench: {e}"))?;
    if json {
        println!(
            "{}",
            json_line(&[
                ("tunnel_mbps", round(r.tunnel_mbps, 1).into()),
                ("loopback_mbps", round(r.loopback_mbps, 1).into()),
                ("ratio", round(r.ratio(), 4).into()),
                ("mib", mib.into()),
                ("tunnel_s", round(r.tunnel_secs, 4).into()),
                ("loopback_s", round(r.loopback_secs, 4).into()),
            ])
        );
    } else {
        println!("{mib} MiB of TCP, one stream:");
        println!(
            "  through the tunnel (WireGuard + smoltcp, two meshes on 127.0.0.1)  {:>10.1} Mbit/s  ({:.3} s)",
            r.tunnel_mbps, r.tunnel_secs
        );
        println!(
            "  kernel TCP on 127.0.0.1                                             {:>10.1} Mbit/s  ({:.3} s)",
            r.loopback_mbps, r.loopback_secs
        );
        println!("  ratio {:.4}", r.ratio());
    }
    Ok(ExitCode::SUCCESS)
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

    #[test]
    fn mesh_revocation_json_keeps_the_promised_keys_first_and_judges_the_target() {
        let r = MeshRevocationResult {
            nodes: 8,
            loss: 0.0,
            samples_ms: vec![12.0, 10.0, 150.0, 11.0],
            revoke_call_ms: vec![0.5, 0.7, 0.6, 0.4],
        };
        assert_eq!(
            r.json(),
            r#"{"nodes":8,"runs":4,"p50_ms":11.0,"p99_ms":150.0,"max_ms":150.0,"loss":0.0,"target":"p99_ms < 100","target_met":false,"revoke_call_ms_p50":0.5,"samples_ms":[12.0,10.0,150.0,11.0]}"#
        );
        let lossy = MeshRevocationResult { loss: 0.05, ..r.clone() };
        assert_eq!(lossy.target(), ("max_ms < 1000".to_owned(), true));
        let fast = MeshRevocationResult { samples_ms: vec![5.0; 20], ..r };
        assert_eq!(fast.target(), ("p99_ms < 100".to_owned(), true));
        assert!(fast.text().contains("target p99_ms < 100: met"), "{}", fast.text());
    }
}
