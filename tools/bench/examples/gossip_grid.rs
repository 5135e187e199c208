//! The runs behind the gossip parameters in docs/benchmarks.md: `revocation` over a grid of
//! fanouts and anti-entropy periods, with the background traffic the JSON leaves out.
//!
//! `cargo run --release -p ppn-bench --example gossip_grid -- [nodes] [link_ms] [loss] [seed]`

use ppn_bench::{RevocationOpts, simulate};

fn main() {
    let a: Vec<String> = std::env::args().skip(1).collect();
    let arg = |i: usize, d: &str| a.get(i).cloned().unwrap_or_else(|| d.to_string());
    let base = RevocationOpts {
        nodes: arg(0, "1000").parse().expect("nodes"),
        link_ms: arg(1, "1").parse().expect("link_ms"),
        loss: arg(2, "0.05").parse().expect("loss"),
        seed: arg(3, "1").parse().expect("seed"),
        ..RevocationOpts::default()
    };
    println!(
        "nodes {} link_ms {} loss {} seed {} revocations {}",
        base.nodes, base.link_ms, base.loss, base.seed, base.revocations
    );
    println!(
        "fanout period_ms   p50_ms   p99_ms   max_ms  msgs/node/rev  duplicates/node/rev  stale answers/rev  background msgs/node/s"
    );
    for fanout in [2, 4, 6, 8, 12] {
        for period_ms in [20.0, 50.0, 200.0] {
            let o = RevocationOpts { fanout, period_ms, ..base.clone() };
            let r = simulate(&o);
            let mut l = r.latencies_us.clone();
            l.sort_unstable();
            let q = |p: f64| l[((p * l.len() as f64).ceil() as usize).clamp(1, l.len()) - 1] as f64 / 1000.0;
            let per_node_rev = r.messages as f64 / (o.nodes * o.revocations) as f64;
            let dups = r.duplicates as f64 / (o.nodes * o.revocations) as f64;
            let stale = r.stale_answers as f64 / o.revocations as f64;
            let background = (r.messages_total - r.messages) as f64 / o.nodes as f64 / (r.simulated_us as f64 / 1e6);
            println!(
                "{fanout:6} {period_ms:9} {:8.3} {:8.3} {:8.3} {per_node_rev:14.2} {dups:20.2} {stale:18.1} {background:23.1}",
                q(0.5),
                q(0.99),
                q(1.0),
            );
        }
    }
}
