//! The gossip engine between real `ppn-tcb` processes, over an in-memory transport that can lose
//! datagrams and partition the fleet: pushes carry a revocation to every node, anti-entropy
//! alone converges when every datagram is lost, a forged record is refused everywhere and never
//! forwarded, a partitioned fleet that revokes on both sides converges after healing, and the
//! relay answers reads only.

use ppn_conformance::HostedTcb;
use ppn_conformance::ledger::{fresh_node_id, now_unix_s};
use ppn_gossip::{Gossip, GossipConfig, Transport, relay};
use ppn_tcb_client::{ClientError, TcbClient};
use ppn_wire::ErrorCode;
use ppn_wire::service::{Digest, NodeId, PublicKey, ResourceType, RevokeTarget, Verdict};
use std::collections::{BTreeSet, HashMap};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use tokio::io::DuplexStream;
use tokio::sync::mpsc;

/// A node's inbox: datagrams with the node they came from.
type Inbox = mpsc::Sender<(NodeId, Vec<u8>)>;

/// The fleet's wires: each node's inbox and relay TCB client, a loss rate, and a partition.
#[derive(Default)]
struct Net {
    inboxes: Mutex<HashMap<NodeId, Inbox>>,
    relays: Mutex<HashMap<NodeId, Arc<TcbClient>>>,
    /// Datagrams dropped per million.
    loss_ppm: AtomicU64,
    /// Nodes in group 1; the others are group 0. While partitioned, nothing crosses.
    group1: Mutex<BTreeSet<NodeId>>,
    partitioned: std::sync::atomic::AtomicBool,
    rng: AtomicU64,
}

impl Net {
    fn blocked(&self, a: NodeId, b: NodeId) -> bool {
        if !self.partitioned.load(Ordering::Relaxed) {
            return false;
        }
        let g = self.group1.lock().unwrap();
        g.contains(&a) != g.contains(&b)
    }

    fn lost(&self) -> bool {
        let ppm = self.loss_ppm.load(Ordering::Relaxed);
        let x = self.rng.fetch_add(0x9E37_79B9_7F4A_7C15, Ordering::Relaxed);
        let z = (x ^ (x >> 31)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        (z ^ (z >> 29)) % 1_000_000 < ppm
    }
}

struct Endpoint {
    me: NodeId,
    net: Arc<Net>,
}

impl Transport for Endpoint {
    type Stream = DuplexStream;

    fn send(&self, to: NodeId, datagram: Vec<u8>) {
        if self.net.blocked(self.me, to) || self.net.lost() {
            return;
        }
        if let Some(tx) = self.net.inboxes.lock().unwrap().get(&to) {
            let _ = tx.try_send((self.me, datagram));
        }
    }

    async fn open(&self, to: NodeId) -> std::io::Result<DuplexStream> {
        if self.net.blocked(self.me, to) {
            return Err(std::io::Error::new(std::io::ErrorKind::TimedOut, "partitioned"));
        }
        let tcb = self.net.relays.lock().unwrap().get(&to).cloned().ok_or(std::io::ErrorKind::NotFound)?;
        let (ours, theirs) = tokio::io::duplex(64 * 1024);
        tokio::spawn(async move { relay::serve(theirs, &tcb).await });
        Ok(ours)
    }
}

struct Node {
    _tcb: HostedTcb,
    client: Arc<TcbClient>,
    id: NodeId,
    gossip: Arc<Gossip<Endpoint>>,
}

/// Starts `n` TCBs that trust each other (one roots file), each with a gossip engine.
async fn fleet(n: usize, cfg: GossipConfig, net: &Arc<Net>) -> Vec<Node> {
    let mut tcbs: Vec<HostedTcb> = (0..n).map(|_| HostedTcb::start()).collect();
    let mut keys: Vec<PublicKey> = Vec::new();
    for t in &tcbs {
        let c = TcbClient::connect(&t.socket).await.unwrap();
        keys.push(c.public_keys().await.unwrap().signing_key);
    }
    let roots = tcbs[0].dir.path().join("roots.txt");
    std::fs::write(&roots, keys.iter().map(|k| format!("{k:x}\n")).collect::<String>()).unwrap();
    let mut nodes = Vec::new();
    for mut t in tcbs.drain(..) {
        t.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
        let client = Arc::new(TcbClient::connect(&t.socket).await.unwrap());
        let id = client.identity().await.unwrap().node_id;
        let relay_client = Arc::new(TcbClient::connect(&t.socket).await.unwrap());
        net.relays.lock().unwrap().insert(id, relay_client);
        let endpoint = Arc::new(Endpoint { me: id, net: Arc::clone(net) });
        let gossip = Gossip::new(id, Arc::clone(&client), endpoint, cfg.clone());
        gossip.prime().await.unwrap();
        nodes.push(Node { _tcb: t, client, id, gossip });
    }
    let ids: Vec<NodeId> = nodes.iter().map(|n| n.id).collect();
    for node in &nodes {
        node.gossip.set_peers(ids.iter().copied());
        let (tx, rx) = mpsc::channel(1024);
        net.inboxes.lock().unwrap().insert(node.id, tx);
        tokio::spawn(Arc::clone(&node.gossip).run(rx));
    }
    nodes
}

async fn heads(c: &TcbClient) -> BTreeSet<Digest> {
    c.heads().await.unwrap().heads.iter().copied().collect()
}

/// Polls `done` until it is true; fails the test after `limit`. Returns how long it took.
async fn until(what: &str, limit: Duration, mut done: impl AsyncFnMut() -> bool) -> Duration {
    let start = Instant::now();
    loop {
        if done().await {
            return start.elapsed();
        }
        assert!(start.elapsed() < limit, "{what}: not within {limit:?}");
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
}

async fn everyone_has(nodes: &[Node], record: Digest) -> bool {
    for n in nodes {
        if !covers(&n.client, record).await {
            return false;
        }
    }
    true
}

/// Whether the TCB holds `record`: it does iff it can name it among the records a peer with
/// no heads lacks.
async fn covers(c: &TcbClient, record: Digest) -> bool {
    let mut have: Vec<Digest> = Vec::new();
    loop {
        let r = c.records_lacking(&have, 12).await.unwrap();
        if r.records.is_empty() {
            return false;
        }
        for rec in &r.records {
            let id = ppn_gossip::engine::record_id(rec);
            if id == record {
                return true;
            }
            have.push(id);
        }
        if have.len() >= 90 {
            return false;
        }
    }
}

fn quiet_entropy() -> GossipConfig {
    GossipConfig { anti_entropy: Duration::from_secs(3600), ..GossipConfig::default() }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pushed_revocation_reaches_every_tcb_without_anti_entropy() {
    let net = Arc::new(Net::default());
    let nodes = fleet(4, quiet_entropy(), &net).await;
    let grantee = fresh_node_id();
    let g = nodes[0].client.issue_grant(grantee, ResourceType::Vm, 1, now_unix_s() + 600).await.unwrap();
    let record = nodes[0].client.revoke(RevokeTarget::Node { node: grantee }).await.unwrap();
    assert_eq!(nodes[0].client.verify_token(&g.token).await.unwrap(), Verdict::GranteeRevoked);
    let took =
        until("revocation everywhere", Duration::from_secs(10), async || everyone_has(&nodes, record).await).await;
    eprintln!("revocation reached 4 TCBs in {took:?}");
    for n in &nodes {
        let s = n.client.ledger_summary().await.unwrap();
        assert!(s.revoked_nodes.contains(&grantee), "{} does not list the revoked node", n.id);
        assert_eq!(n.gossip.counters.pulls.load(Ordering::Relaxed), 0, "anti-entropy ran");
    }
    let pushed: u64 = nodes.iter().map(|n| n.gossip.counters.pushed_records.load(Ordering::Relaxed)).sum();
    assert!(pushed >= 3, "{pushed} records pushed");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_every_datagram_lost_anti_entropy_alone_converges() {
    let net = Arc::new(Net::default());
    net.loss_ppm.store(1_000_000, Ordering::Relaxed);
    let cfg = GossipConfig { anti_entropy: Duration::from_millis(100), ..GossipConfig::default() };
    let nodes = fleet(3, cfg, &net).await;
    let mut records = Vec::new();
    for n in &nodes {
        records.push(n.client.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap());
    }
    until("three revocations everywhere by pulls", Duration::from_secs(20), async || {
        for r in &records {
            if !everyone_has(&nodes, *r).await {
                return false;
            }
        }
        true
    })
    .await;
    let h0 = heads(&nodes[0].client).await;
    for n in &nodes[1..] {
        assert_eq!(heads(&n.client).await, h0);
    }
    for n in &nodes {
        assert_eq!(n.gossip.counters.received_records.load(Ordering::Relaxed), 0, "a datagram got through");
        assert!(n.gossip.counters.pulled_accepted.load(Ordering::Relaxed) >= 1);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_forged_record_is_refused_by_every_tcb_and_never_forwarded() {
    let net = Arc::new(Net::default());
    let nodes = fleet(3, quiet_entropy(), &net).await;
    // A real record, taken before anyone else has it, with one signature byte changed.
    let target = fresh_node_id();
    let record = nodes[0].client.revoke(RevokeTarget::Node { node: target }).await.unwrap();
    let lacking = nodes[0].client.records_lacking(&[], 12).await.unwrap();
    let real = lacking.records.iter().find(|r| ppn_gossip::engine::record_id(r) == record).unwrap().to_vec();
    let mut forged = real.clone();
    let last = forged.len() - 1;
    forged[last] ^= 0x40;
    // Node 1's proxy is hostile: it pushes the forgery to node 2 as if gossiping it.
    let (datagrams, _) = ppn_gossip::msg::encode_records(&[forged.clone()]);
    for d in datagrams {
        nodes[2].gossip.on_datagram(nodes[1].id, &d).await;
    }
    assert_eq!(nodes[2].gossip.counters.refused.load(Ordering::Relaxed), 1);
    let outcome = nodes[1].client.ingest_records(&[forged]).await.unwrap();
    assert_eq!(outcome, [ppn_wire::service::IngestOutcome::BadSignature]);
    // The real one still gets everywhere, and nobody forwarded the forgery.
    until("the real record everywhere", Duration::from_secs(10), async || everyone_has(&nodes, record).await).await;
    assert_eq!(nodes[0].gossip.counters.refused.load(Ordering::Relaxed), 0, "the forgery was forwarded");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_partitioned_fleet_that_revokes_on_both_sides_converges_after_healing() {
    let net = Arc::new(Net::default());
    let cfg = GossipConfig { anti_entropy: Duration::from_millis(200), ..GossipConfig::default() };
    let nodes = fleet(4, cfg, &net).await;
    net.group1.lock().unwrap().extend([nodes[2].id, nodes[3].id]);
    net.partitioned.store(true, Ordering::Relaxed);
    let a = nodes[0].client.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap();
    let b = nodes[3].client.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap();
    until("each side has its own revocation", Duration::from_secs(10), async || {
        everyone_has(&nodes[..2], a).await && everyone_has(&nodes[2..], b).await
    })
    .await;
    assert!(!covers(&nodes[0].client, b).await, "the partition leaked");
    net.partitioned.store(false, Ordering::Relaxed);
    let took = until("same heads everywhere after healing", Duration::from_secs(20), async || {
        let h0 = heads(&nodes[0].client).await;
        for n in &nodes[1..] {
            if heads(&n.client).await != h0 {
                return false;
            }
        }
        h0.len() == 1 || (covers(&nodes[0].client, a).await && covers(&nodes[0].client, b).await)
    })
    .await;
    eprintln!("healed in {took:?}");
    for n in &nodes {
        assert!(covers(&n.client, a).await && covers(&n.client, b).await, "{} misses a revocation", n.id);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_relay_answers_reads_and_refuses_everything_else() {
    let tcb = HostedTcb::start();
    let local = Arc::new(TcbClient::connect(&tcb.socket).await.unwrap());
    let (ours, theirs) = tokio::io::duplex(64 * 1024);
    let served = Arc::clone(&local);
    let server = tokio::spawn(async move { relay::serve(theirs, &served).await });
    let peer = TcbClient::over(ours).await.unwrap();
    assert_eq!(peer.identity().await.unwrap().node_id, local.identity().await.unwrap().node_id);
    assert!(peer.heads().await.is_ok());
    assert!(peer.ledger_summary().await.is_ok());
    let refused = [
        peer.issue_grant(fresh_node_id(), ResourceType::Vm, 1, now_unix_s() + 60).await.err(),
        peer.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.err(),
        peer.ingest_records(&[vec![1u8; 10]]).await.err(),
        peer.status().await.err(),
    ];
    for r in refused {
        match r {
            Some(ClientError::Tcb { code: ErrorCode::Rejected, detail }) => {
                assert!(detail.contains("not relayed"), "{detail}")
            }
            other => panic!("a write through the relay: {other:?}"),
        }
    }
    assert_eq!(local.ledger_summary().await.unwrap().record_count, 0, "a write reached the TCB");
    drop(peer);
    let stats = server.await.unwrap().unwrap();
    assert_eq!((stats.relayed, stats.refused), (3, 4));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn swim_sees_every_peer_up_then_a_silent_one_down() {
    let net = Arc::new(Net::default());
    let nodes = fleet(3, quiet_entropy(), &net).await;
    let up = |n: &Node, id: NodeId| n.gossip.peers().get(&id).is_some_and(|v| v.up);
    let took = until("every peer up everywhere", Duration::from_secs(10), async || {
        nodes.iter().all(|n| nodes.iter().filter(|m| m.id != n.id).all(|m| up(n, m.id)))
    })
    .await;
    eprintln!("all up after {took:?}");
    // Node 2 goes silent: nothing reaches it any more, so it answers no probe.
    let dead = nodes[2].id;
    net.inboxes.lock().unwrap().remove(&dead);
    let took = until("the silent node down at the others", Duration::from_secs(15), async || {
        !up(&nodes[0], dead) && !up(&nodes[1], dead)
    })
    .await;
    eprintln!("down after {took:?}");
    assert!(up(&nodes[0], nodes[1].id) && up(&nodes[1], nodes[0].id), "the live nodes still see each other");
}
