//! Revocation gossip: a deterministic discrete-event simulation of a fleet of real ledgers.
//!
//! Every node is a real [`Ledger`] over [`MemStorage`]; the simulation only moves bytes between
//! them, through the ledger's own API (`author`, `ingest`, `heads`, `records_lacking`), over
//! links with a latency (plus up to ±10% jitter) and an independent loss probability per
//! message. Time is simulated (microseconds), randomness comes from one seeded [`Rng`]: one
//! seed, one result. The CPU time a node spends on a record is not simulated (an Ed25519
//! verification is ~60 µs, small next to a link).
//!
//! Protocol, per node:
//! - **eager push**: when the node accepts a record it did not have (authored, pushed to it, or
//!   pulled), it sends the record's bytes to `fanout` random peers (never itself nor the peer
//!   it got the record from);
//! - **anti-entropy**: every `period_ms` (each node at its own phase) it pulls from one random
//!   peer with the same state machine the proxy uses, `ppn_wire::sync::Pull`: it sends its
//!   heads, known sample and known duplicates, the peer answers `records_lacking(have, 12)`, the
//!   node ingests the answer and asks again while the peer has more and the round made progress
//!   (see `docs/ledger.md` §5).
//!
//! Scenario: every node ingests the same genesis record, then `revocations` times a random
//! unrevoked node revokes another random unrevoked node (`author(Body::NodeRevoked)`); the clock
//! runs until every ledger reports the node revoked (`revocations().node_revoked`), then two
//! more periods, before the next one. The revoked node stays in the mesh and keeps relaying (the
//! ledger, not the mesh, is what is measured).

use crate::{Rng, round};
use ppn_journal::mem::MemStorage;
use ppn_ledger::{Body, Ledger, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::service::{Digest, IngestOutcome, NodeId, RECORDS_PER_FRAME, Records};
use ppn_wire::sync::Pull;
use serde_json::json;
use std::cmp::Ordering;
use std::collections::BinaryHeap;
use std::collections::HashMap;
use std::rc::Rc;
use std::sync::Arc;

/// Simulated time zero, as the ledgers' Unix clock.
const EPOCH_UNIX_S: u64 = 1_750_000_000;
/// A revocation that has not reached every node after this long is given up (its missing
/// nodes count as this latency and in [`RevocationReport::unreached`]).
const GIVE_UP_US: u64 = 60_000_000;

/// Options of [`revocation`].
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationOpts {
    pub nodes: usize,
    /// One-way link latency, before jitter.
    pub link_ms: f64,
    /// Probability that any one message is lost.
    pub loss: f64,
    pub seed: u64,
    /// Peers a node pushes a newly accepted record to.
    pub fanout: usize,
    /// Anti-entropy period of each node.
    pub period_ms: f64,
    /// Revocations run one after the other.
    pub revocations: usize,
}

impl Default for RevocationOpts {
    fn default() -> Self {
        Self { nodes: 1000, link_ms: 1.0, loss: 0.05, seed: 1, fanout: 8, period_ms: 50.0, revocations: 20 }
    }
}

impl RevocationOpts {
    /// Refuses options the simulation cannot run.
    pub fn check(&self) -> Result<(), String> {
        if self.nodes < 3 {
            return Err("--nodes must be at least 3".into());
        }
        if self.revocations == 0 || self.revocations + 2 > self.nodes {
            return Err("--revocations must be in 1 ..= nodes - 2 (each revokes a different node)".into());
        }
        if !(self.link_ms.is_finite() && self.link_ms >= 0.0) {
            return Err("--link-ms must be a finite number >= 0".into());
        }
        if !(0.0..1.0).contains(&self.loss) {
            return Err("--loss must be in [0, 1)".into());
        }
        if self.fanout == 0 {
            return Err("--fanout must be at least 1".into());
        }
        if !(self.period_ms.is_finite() && self.period_ms >= 0.001) {
            return Err("--period-ms must be at least 0.001".into());
        }
        Ok(())
    }
}

/// What [`simulate`] measured.
#[derive(Debug, Clone, PartialEq)]
pub struct RevocationReport {
    /// Per revocation and per node other than its author: simulated µs from the revocation's
    /// authoring until that node's ledger reported the node revoked.
    pub latencies_us: Vec<u64>,
    /// (revocation, node) pairs not reached within the give-up time (60 s simulated).
    pub unreached: usize,
    /// Messages that carried a revocation: pushes, and anti-entropy exchanges (request and
    /// answer) whose answer held records.
    pub messages: u64,
    /// Every message sent, background anti-entropy exchanges that carried nothing included.
    pub messages_total: u64,
    /// Per revocation: how many ledgers report its node revoked at the end of the run.
    pub holders: Vec<usize>,
    /// Simulated time of the whole run, from the first revocation.
    pub simulated_us: u64,
    /// `ingest` calls that returned `Duplicate` (cheap: no signature check).
    pub duplicates: u64,
    /// Anti-entropy answers that held records but none the requester accepted (all already
    /// held): the price of a peer not knowing exactly what the requester has.
    pub stale_answers: u64,
}

enum Msg {
    Push { from: usize, record: Rc<[u8]> },
    Ask { from: usize, have: Vec<Digest> },
    Answer { from: usize, answer: Box<Records> },
}

enum Kind {
    Tick,
    Deliver(Msg),
}

struct Event {
    at: u64,
    seq: u64,
    to: usize,
    kind: Kind,
}

// Earliest first in a max-heap; ties in scheduling order, so the run is deterministic.
impl Ord for Event {
    fn cmp(&self, other: &Self) -> Ordering {
        (other.at, other.seq).cmp(&(self.at, self.seq))
    }
}
impl PartialOrd for Event {
    fn partial_cmp(&self, other: &Self) -> Option<Ordering> {
        Some(self.cmp(other))
    }
}
impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        (self.at, self.seq) == (other.at, other.seq)
    }
}
impl Eq for Event {}

struct Sim {
    fanout: usize,
    loss: f64,
    link_us: f64,
    period_us: u64,
    rng: Rng,
    ledgers: Vec<Ledger<MemStorage>>,
    queue: BinaryHeap<Event>,
    seq: u64,
    now: u64,
    messages: u64,
    messages_total: u64,
    duplicates: u64,
    stale_answers: u64,
    /// The node being revoked, and when each node learnt it.
    target: Option<NodeId>,
    reached: Vec<Option<u64>>,
    remaining: usize,
    /// Pulls under way: (requester, peer) -> state.
    pulls: HashMap<(usize, usize), Pull>,
}

impl Sim {
    fn schedule(&mut self, at: u64, to: usize, kind: Kind) {
        self.seq += 1;
        self.queue.push(Event { at, seq: self.seq, to, kind });
    }

    fn send(&mut self, to: usize, msg: Msg) {
        self.messages_total += 1;
        let lost = self.rng.unit() < self.loss;
        let delay = (self.link_us * (0.9 + 0.2 * self.rng.unit())).round() as u64;
        if !lost {
            self.schedule(self.now + delay, to, Kind::Deliver(msg));
        }
    }

    fn random_peer(&mut self, of: usize) -> usize {
        let p = self.rng.below(self.ledgers.len() - 1);
        if p >= of { p + 1 } else { p }
    }

    /// Eager push of a record `node` just accepted.
    fn push(&mut self, node: usize, record: Rc<[u8]>, except: Option<usize>) {
        let n = self.ledgers.len();
        let eligible = n - 1 - usize::from(except.is_some());
        let peers: Vec<usize> = if self.fanout >= eligible {
            (0..n).filter(|&p| p != node && Some(p) != except).collect()
        } else {
            let mut chosen = Vec::with_capacity(self.fanout);
            while chosen.len() < self.fanout {
                let p = self.random_peer(node);
                if Some(p) != except && !chosen.contains(&p) {
                    chosen.push(p);
                }
            }
            chosen
        };
        for p in peers {
            self.messages += 1;
            self.send(p, Msg::Push { from: node, record: record.clone() });
        }
    }

    /// `node` takes in a record from `from`; pushes on whatever it newly accepted.
    fn ingest(&mut self, node: usize, bytes: &[u8], from: usize) -> IngestOutcome {
        let before = self.ledgers[node].dag().len();
        let outcome = self.ledgers[node].ingest(bytes).expect("memory storage does not fail");
        if outcome == IngestOutcome::Duplicate {
            self.duplicates += 1;
        }
        let after = self.ledgers[node].dag().len();
        if after == before {
            return outcome;
        }
        // The record, and any held record it released, in acceptance order.
        let fresh: Vec<Rc<[u8]>> =
            self.ledgers[node].dag().iter().skip(before).map(|r| Rc::from(r.bytes.as_slice())).collect();
        for r in fresh {
            self.push(node, r, Some(from));
        }
        self.note(node);
        outcome
    }

    /// `node` asks `peer` for what it lacks, as the next round of their pull.
    fn ask(&mut self, node: usize, peer: usize) {
        let heads = self.ledgers[node].heads();
        let pull = self.pulls.entry((node, peer)).or_default();
        let have = pull.ask(&heads, RECORDS_PER_FRAME as u16).peer_heads.to_vec();
        self.send(peer, Msg::Ask { from: node, have });
    }

    fn note(&mut self, node: usize) {
        if let Some(t) = self.target
            && self.reached[node].is_none()
            && self.ledgers[node].revocations().node_revoked(&t)
        {
            self.reached[node] = Some(self.now);
            self.remaining -= 1;
        }
    }

    fn step(&mut self) {
        let ev = self.queue.pop().expect("ticks keep the queue from emptying");
        self.now = ev.at;
        let n = ev.to;
        match ev.kind {
            Kind::Tick => {
                let peer = self.random_peer(n);
                // A new pull; one still under way with this peer (its answer lost) is dropped.
                self.pulls.insert((n, peer), Pull::new());
                self.ask(n, peer);
                self.schedule(self.now + self.period_us, n, Kind::Tick);
            }
            Kind::Deliver(Msg::Push { from, record }) => {
                self.ingest(n, &record, from);
            }
            Kind::Deliver(Msg::Ask { from, have }) => {
                let answer = self.ledgers[n].records_lacking(&have, RECORDS_PER_FRAME);
                if !answer.records.is_empty() {
                    self.messages += 2;
                }
                self.send(from, Msg::Answer { from: n, answer: Box::new(answer) });
            }
            Kind::Deliver(Msg::Answer { from, answer }) => {
                let outcomes: Vec<IngestOutcome> = answer.records.iter().map(|r| self.ingest(n, r, from)).collect();
                if !answer.records.is_empty() && !outcomes.contains(&IngestOutcome::Accepted) {
                    self.stale_answers += 1;
                }
                let id_of = |r: &[u8]| ppn_ledger::Record::decode(r).map(|r| r.id).unwrap_or_default();
                let again = self.pulls.get_mut(&(n, from)).is_some_and(|p| p.answered(&answer, &outcomes, id_of));
                if again {
                    self.ask(n, from);
                } else {
                    self.pulls.remove(&(n, from));
                }
            }
        }
    }

    fn run_until(&mut self, t: u64) {
        while self.queue.peek().is_some_and(|e| e.at <= t) {
            self.step();
        }
        self.now = self.now.max(t);
    }
}

fn node_seed(i: usize) -> [u8; 32] {
    let mut s = [0u8; 32];
    s[..8].copy_from_slice(&(i as u64).to_le_bytes());
    s[8..16].copy_from_slice(b"ppnbench");
    s
}

/// Runs the simulation. Panics on options [`RevocationOpts::check`] refuses.
pub fn simulate(o: &RevocationOpts) -> RevocationReport {
    if let Err(e) = o.check() {
        panic!("{e}");
    }
    let n = o.nodes;
    let keys: Vec<NodeKeys> = (0..n).map(|i| NodeKeys::from_seed(&node_seed(i))).collect();
    let ids: Vec<NodeId> = keys.iter().map(NodeKeys::node_id).collect();
    let mut roots = Roots::default();
    for k in &keys {
        assert!(roots.add(&k.signing_public()));
    }
    let roots = Arc::new(roots);
    let mut ledgers: Vec<Ledger<MemStorage>> = keys
        .into_iter()
        .map(|k| Ledger::open(k, roots.clone(), MemStorage::default()).expect("memory storage does not fail").0)
        .collect();

    // Genesis: one record every node holds before the clock starts.
    let g = ledgers[0]
        .author(Body::GrantRevoked { issuer: ids[0], first: u64::MAX, last: u64::MAX }, EPOCH_UNIX_S)
        .expect("author genesis");
    let genesis = ledgers[0].dag().get(&g).expect("genesis").bytes.clone();
    for l in &mut ledgers[1..] {
        assert_eq!(l.ingest(&genesis), Ok(IngestOutcome::Accepted));
    }

    let period_us = ((o.period_ms * 1000.0).round() as u64).max(1);
    let mut sim = Sim {
        fanout: o.fanout,
        loss: o.loss,
        link_us: o.link_ms * 1000.0,
        period_us,
        rng: Rng::new(o.seed),
        ledgers,
        queue: BinaryHeap::new(),
        seq: 0,
        now: 0,
        messages: 0,
        messages_total: 0,
        duplicates: 0,
        stale_answers: 0,
        target: None,
        reached: vec![None; n],
        remaining: 0,
        pulls: HashMap::new(),
    };
    for node in 0..n {
        let phase = sim.rng.below(period_us as usize) as u64;
        sim.schedule(phase, node, Kind::Tick);
    }

    let mut revoked = vec![false; n];
    let mut targets = Vec::with_capacity(o.revocations);
    let mut latencies_us = Vec::with_capacity(o.revocations * (n - 1));
    let mut unreached = 0;
    for _ in 0..o.revocations {
        let author = pick(&mut sim.rng, &revoked, None);
        let target = pick(&mut sim.rng, &revoked, Some(author));
        revoked[target] = true;
        targets.push(ids[target]);

        let t0 = sim.now;
        sim.target = Some(ids[target]);
        sim.reached = vec![None; n];
        sim.remaining = n;
        let id = sim.ledgers[author]
            .author(Body::NodeRevoked { node: ids[target] }, EPOCH_UNIX_S + t0 / 1_000_000)
            .expect("an unrevoked root may revoke");
        sim.note(author);
        debug_assert_eq!(sim.remaining, n - 1);
        let bytes: Rc<[u8]> = Rc::from(sim.ledgers[author].dag().get(&id).expect("authored").bytes.as_slice());
        sim.push(author, bytes, None);

        while sim.remaining > 0 && sim.queue.peek().is_some_and(|e| e.at <= t0 + GIVE_UP_US) {
            sim.step();
        }
        for (node, r) in sim.reached.iter().enumerate() {
            if node == author {
                continue;
            }
            match r {
                Some(t) => latencies_us.push(t - t0),
                None => {
                    unreached += 1;
                    latencies_us.push(GIVE_UP_US);
                }
            }
        }
        sim.target = None;
        let settle = sim.now + 2 * period_us;
        sim.run_until(settle);
    }

    let holders =
        targets.iter().map(|t| sim.ledgers.iter().filter(|l| l.revocations().node_revoked(t)).count()).collect();
    RevocationReport {
        latencies_us,
        unreached,
        messages: sim.messages,
        messages_total: sim.messages_total,
        holders,
        simulated_us: sim.now,
        duplicates: sim.duplicates,
        stale_answers: sim.stale_answers,
    }
}

/// A random node not `revoked` and not `except`.
fn pick(rng: &mut Rng, revoked: &[bool], except: Option<usize>) -> usize {
    loop {
        let i = rng.below(revoked.len());
        if !revoked[i] && Some(i) != except {
            return i;
        }
    }
}

/// The `p`-quantile of sorted `v`, nearest rank.
fn quantile(v: &[u64], p: f64) -> u64 {
    let rank = ((p * v.len() as f64).ceil() as usize).clamp(1, v.len());
    v[rank - 1]
}

/// Runs the simulation; JSON: `{"nodes", "link_ms", "loss", "fanout", "period_ms",
/// "revocations", "p50_ms", "p99_ms", "max_ms", "messages_per_node"}`. Latencies are over every
/// (revocation, node other than its author) pair; `messages_per_node` is
/// [`RevocationReport::messages`] per node per revocation.
pub fn revocation(o: &RevocationOpts) -> serde_json::Value {
    let r = simulate(o);
    let mut l = r.latencies_us.clone();
    l.sort_unstable();
    let ms = |us: u64| round(us as f64 / 1000.0, 3);
    json!({
        "nodes": o.nodes,
        "link_ms": o.link_ms,
        "loss": o.loss,
        "fanout": o.fanout,
        "period_ms": o.period_ms,
        "revocations": o.revocations,
        "p50_ms": ms(quantile(&l, 0.50)),
        "p99_ms": ms(quantile(&l, 0.99)),
        "max_ms": ms(*l.last().expect("at least one latency")),
        "messages_per_node": round(r.messages as f64 / (o.nodes * o.revocations) as f64, 2),
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn small(seed: u64, loss: f64) -> RevocationOpts {
        RevocationOpts { nodes: 30, link_ms: 1.0, loss, seed, fanout: 4, period_ms: 50.0, revocations: 4 }
    }

    #[test]
    fn same_seed_same_json_other_seed_other_json() {
        let a = revocation(&small(1, 0.05));
        assert_eq!(a, revocation(&small(1, 0.05)));
        assert_ne!(a, revocation(&small(2, 0.05)));
    }

    #[test]
    fn every_node_ends_holding_every_revocation_despite_loss() {
        let o = small(9, 0.2);
        let r = simulate(&o);
        assert_eq!(r.unreached, 0);
        assert_eq!(r.holders, vec![o.nodes; o.revocations]);
        assert_eq!(r.latencies_us.len(), o.revocations * (o.nodes - 1));
        assert!(r.duplicates > 0, "pushes overlap: duplicates are the normal case");
    }

    #[test]
    fn messages_per_node_is_positive_and_bounded() {
        let o = small(3, 0.2);
        let v = revocation(&o);
        let m = v["messages_per_node"].as_f64().unwrap();
        // Each node pushes a new record once to `fanout` peers; pulls add a few exchanges.
        assert!(m > 0.0 && m <= o.fanout as f64 + 4.0, "{v}");
        assert!(v["max_ms"].as_f64().unwrap() < 1_000.0, "{v}");
        assert!(v["p50_ms"].as_f64().unwrap() <= v["p99_ms"].as_f64().unwrap());
    }

    #[test]
    fn ledgers_longer_than_one_answer_converge() {
        // 16 records: anti-entropy answers carry `more`, and peers behind a requester answer
        // with their oldest records; neither may stall the run.
        let o =
            RevocationOpts { nodes: 20, link_ms: 1.0, loss: 0.1, seed: 5, fanout: 2, period_ms: 20.0, revocations: 15 };
        let r = simulate(&o);
        assert_eq!(r.unreached, 0);
        assert_eq!(r.holders, vec![o.nodes; o.revocations]);
        assert!(r.stale_answers > 0);
    }

    #[test]
    fn a_fanout_beyond_the_fleet_sends_to_everyone_once() {
        let o = RevocationOpts {
            nodes: 5,
            link_ms: 1.0,
            loss: 0.0,
            seed: 1,
            fanout: 10,
            period_ms: 1000.0,
            revocations: 1,
        };
        let r = simulate(&o);
        assert_eq!(r.unreached, 0);
        // The author reaches all 4 peers directly; each pushes on to the 3 it did not hear from.
        assert_eq!(r.messages, 4 + 4 * 3);
        assert!(r.latencies_us.iter().all(|&l| (900..=1100).contains(&l)), "{:?}", r.latencies_us);
    }
}
