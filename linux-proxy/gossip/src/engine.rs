//! The gossip engine of one node's proxy.
//!
//! - **Push on arrival.** A watcher polls the local TCB's heads; when they change it fetches the
//!   new records (`RecordsLacking` against the heads it saw last) and pushes them to `fanout`
//!   random peers. A peer's proxy ingests pushed records into its own TCB and forwards the ones
//!   its TCB *accepted* (never the refused, nor the pending: a record must pass a TCB before it
//!   travels further, so a forger cannot use the fleet to amplify junk). A pushed record whose
//!   parents the receiver lacks triggers a pull from the sender.
//! - **Anti-entropy.** Every `anti_entropy` period the engine pulls from one random peer through
//!   that peer's read-only relay ([`crate::relay`]) with the shared `Pull` state machine, so
//!   anything a push missed (loss, partition, restart) arrives within a period or two.
//! - **Adverts.** Every `advert_every` the engine sends this node's advert to every peer, and
//!   keeps the newest advert from each peer (only from the peer itself).
//!
//! The engine holds no secret and decides nothing about trust: every record goes through a TCB.

use crate::membership::{self, Effects, Swim, SwimId};
use crate::msg::{self, Advert, Message};
use ppn_tcb_client::{ClientError, TcbClient, sync};
use ppn_wire::service::{Digest, HAVE_MAX, IngestOutcome, NodeId, RECORDS_PER_FRAME};
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, HashSet, VecDeque};
use std::future::Future;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};
use tokio::io::{AsyncRead, AsyncWrite};
use tokio::sync::{Notify, mpsc};

/// How datagrams and streams reach a peer (the mesh; an in-memory fabric in tests).
pub trait Transport: Send + Sync + 'static {
    type Stream: AsyncRead + AsyncWrite + Send + Unpin + 'static;
    /// Sends one datagram, best effort (it may be lost).
    fn send(&self, to: NodeId, datagram: Vec<u8>);
    /// Opens a stream to the peer's relay.
    fn open(&self, to: NodeId) -> impl Future<Output = std::io::Result<Self::Stream>> + Send;
}

/// Engine settings.
#[derive(Debug, Clone)]
pub struct GossipConfig {
    /// Peers each new record is pushed to.
    pub fanout: usize,
    /// How often the local TCB's heads are checked for new records.
    pub watch_every: Duration,
    /// How often to pull from a random peer.
    pub anti_entropy: Duration,
    /// How often to send this node's advert.
    pub advert_every: Duration,
    /// Record ids remembered as already handled.
    pub seen_capacity: usize,
}

impl Default for GossipConfig {
    fn default() -> Self {
        Self {
            fanout: 8,
            watch_every: Duration::from_millis(10),
            anti_entropy: Duration::from_millis(1000),
            advert_every: Duration::from_millis(1000),
            seen_capacity: 8192,
        }
    }
}

/// Counters, for `ppn fleet status` and tests.
#[derive(Debug, Default)]
pub struct Counters {
    pub pushed_records: AtomicU64,
    pub received_records: AtomicU64,
    pub accepted: AtomicU64,
    pub refused: AtomicU64,
    pub bad_datagrams: AtomicU64,
    pub pulls: AtomicU64,
    pub pulled_accepted: AtomicU64,
    pub pull_failures: AtomicU64,
}

/// What this node knows of a peer.
#[derive(Debug, Clone, Default)]
pub struct PeerView {
    pub advert: Option<Advert>,
    pub last_heard: Option<Instant>,
    /// SWIM says the peer is up (alive or suspect, not yet declared down).
    pub up: bool,
}

/// A bounded set of record ids, oldest forgotten first.
#[derive(Debug, Default)]
struct Seen {
    set: HashSet<Digest>,
    order: VecDeque<Digest>,
}

impl Seen {
    /// Inserts `id`; false if it was there.
    fn insert(&mut self, id: Digest, capacity: usize) -> bool {
        if !self.set.insert(id) {
            return false;
        }
        self.order.push_back(id);
        while self.order.len() > capacity {
            if let Some(old) = self.order.pop_front() {
                self.set.remove(&old);
            }
        }
        true
    }
}

/// The gossip engine.
pub struct Gossip<T: Transport> {
    me: NodeId,
    tcb: Arc<TcbClient>,
    transport: Arc<T>,
    cfg: GossipConfig,
    peers: Mutex<BTreeMap<NodeId, PeerView>>,
    seen: Mutex<Seen>,
    rng: Mutex<u64>,
    advert: Mutex<Advert>,
    pull_now: Notify,
    /// The local TCB's heads when the watcher last looked.
    watched: tokio::sync::Mutex<Option<Vec<Digest>>>,
    swim: Mutex<Swim>,
    changed: Arc<Notify>,
    /// Further subscribers to ledger changes ([`Gossip::subscribe_ledger_changes`]).
    subscribers: Mutex<Vec<Arc<Notify>>>,
    timers: mpsc::UnboundedSender<foca::Timer<SwimId>>,
    timer_rx: Mutex<Option<mpsc::UnboundedReceiver<foca::Timer<SwimId>>>>,
    pub counters: Counters,
}

impl<T: Transport> std::fmt::Debug for Gossip<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gossip").field("me", &self.me).finish_non_exhaustive()
    }
}

/// A record's id: SHA-256 of its bytes (as the ledger names records).
pub fn record_id(record: &[u8]) -> Digest {
    ppn_wire::ByteArray(Sha256::digest(record).into())
}

fn now_unix_ms() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_millis() as u64).unwrap_or(0)
}

impl<T: Transport> Gossip<T> {
    pub fn new(me: NodeId, tcb: Arc<TcbClient>, transport: Arc<T>, cfg: GossipConfig) -> Arc<Self> {
        let seed = u64::from_le_bytes(me.0.0) ^ now_unix_ms();
        let advert = Advert {
            node_id: me,
            sequence: 0,
            sent_unix_ms: 0,
            free_blocks: 0,
            total_blocks: 0,
            block_mib: 2,
            cpus: 0,
            load_permille: 0,
            vms: 0,
        };
        let swim_id = SwimId { node: me.0.0, incarnation: now_unix_ms() };
        let swim = Swim::new(swim_id, membership::config(16, msg::MAX_SWIM), seed);
        let (timers, timer_rx) = mpsc::unbounded_channel();
        Arc::new(Self {
            me,
            tcb,
            transport,
            cfg,
            peers: Mutex::default(),
            seen: Mutex::default(),
            rng: Mutex::new(seed),
            advert: Mutex::new(advert),
            pull_now: Notify::new(),
            watched: tokio::sync::Mutex::new(None),
            swim: Mutex::new(swim),
            changed: Arc::new(Notify::new()),
            subscribers: Mutex::default(),
            timers,
            timer_rx: Mutex::new(Some(timer_rx)),
            counters: Counters::default(),
        })
    }

    pub fn me(&self) -> NodeId {
        self.me
    }

    /// Notified whenever the watcher sees the local TCB's heads move (a new record, whoever
    /// wrote it): the node daemon re-reads the members then, so a revocation drops its peer at
    /// once.
    pub fn ledger_changed(&self) -> Arc<Notify> {
        Arc::clone(&self.changed)
    }

    /// A notifier of its own for another task that follows ledger changes (each change is one
    /// permit, so a change while the task is busy is not lost).
    pub fn subscribe_ledger_changes(&self) -> Arc<Notify> {
        let n = Arc::new(Notify::new());
        lock(&self.subscribers).push(Arc::clone(&n));
        n
    }

    /// Sets the peers (the ledger's admitted, unrevoked nodes that have a mesh peer). A node
    /// that is no longer a peer is forgotten with its advert; a new one is introduced to SWIM.
    pub fn set_peers(&self, ids: impl IntoIterator<Item = NodeId>) {
        let mut fx = Effects::default();
        {
            let mut peers = lock(&self.peers);
            let new: BTreeMap<NodeId, PeerView> = ids
                .into_iter()
                .filter(|id| *id != self.me)
                .map(|id| (id, peers.get(&id).cloned().unwrap_or_default()))
                .collect();
            let mut swim = lock(&self.swim);
            for id in new.keys().filter(|id| !peers.contains_key(id)) {
                swim.announce(*id, &mut fx);
            }
            *peers = new;
        }
        self.apply(fx);
    }

    /// Carries out what a SWIM step asked for: packets to peers, timers, up/down changes.
    fn apply(&self, fx: Effects) {
        let peers = lock(&self.peers);
        for (to, packet) in fx.send {
            if peers.contains_key(&to.node_id())
                && let Some(d) = msg::encode_swim(&packet)
            {
                self.transport.send(to.node_id(), d);
            }
        }
        for (timer, after) in fx.timers {
            let tx = self.timers.clone();
            tokio::spawn(async move {
                tokio::time::sleep(after).await;
                let _ = tx.send(timer);
            });
        }
    }

    /// The peers and what is known of them; `up` is SWIM's view now.
    pub fn peers(&self) -> BTreeMap<NodeId, PeerView> {
        let mut peers = lock(&self.peers).clone();
        let ids: std::collections::BTreeSet<NodeId> = peers.keys().copied().collect();
        let up = lock(&self.swim).up(&ids);
        for (id, v) in peers.iter_mut() {
            v.up = up.contains(id);
        }
        peers
    }

    /// Sets the figures of this node's next adverts (the node id and sequence are the engine's).
    pub fn set_advert(&self, f: impl FnOnce(&mut Advert)) {
        let mut a = lock(&self.advert);
        f(&mut a);
        a.node_id = self.me;
    }

    fn pick(&self, n: usize, except: Option<NodeId>) -> Vec<NodeId> {
        let mut ids: Vec<NodeId> = lock(&self.peers).keys().copied().filter(|id| Some(*id) != except).collect();
        let mut rng = lock(&self.rng);
        // Partial Fisher-Yates with SplitMix64.
        let n = n.min(ids.len());
        for i in 0..n {
            *rng = rng.wrapping_add(0x9E37_79B9_7F4A_7C15);
            let mut z = *rng;
            z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
            z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
            let j = i + ((z ^ (z >> 31)) as usize) % (ids.len() - i);
            ids.swap(i, j);
        }
        ids.truncate(n);
        ids
    }

    fn push(&self, records: &[Vec<u8>], except: Option<NodeId>) {
        if records.is_empty() {
            return;
        }
        let (datagrams, _) = msg::encode_records(records);
        for peer in self.pick(self.cfg.fanout, except) {
            for d in &datagrams {
                self.transport.send(peer, d.clone());
            }
        }
        self.counters.pushed_records.fetch_add(records.len() as u64, Ordering::Relaxed);
    }

    /// Handles one datagram that arrived through `from`'s tunnel.
    pub async fn on_datagram(&self, from: NodeId, bytes: &[u8]) {
        if !lock(&self.peers).contains_key(&from) {
            self.counters.bad_datagrams.fetch_add(1, Ordering::Relaxed);
            return;
        }
        match msg::decode(bytes) {
            Ok(Message::Records(records)) => self.on_records(from, &records).await,
            Ok(Message::Advert(a)) => {
                let mut peers = lock(&self.peers);
                let Some(view) = peers.get_mut(&from) else { return };
                view.last_heard = Some(Instant::now());
                // Only the node itself speaks for itself; the newest sequence wins.
                if a.node_id == from && view.advert.is_none_or(|old| a.sequence > old.sequence) {
                    view.advert = Some(a);
                }
            }
            Ok(Message::Swim(packet)) => {
                let mut fx = Effects::default();
                lock(&self.swim).handle(packet, &mut fx);
                self.apply(fx);
            }
            Ok(Message::Unknown(_)) => {}
            Err(_) => {
                self.counters.bad_datagrams.fetch_add(1, Ordering::Relaxed);
            }
        }
    }

    async fn on_records(&self, from: NodeId, records: &[&[u8]]) {
        if let Some(view) = lock(&self.peers).get_mut(&from) {
            view.last_heard = Some(Instant::now());
        }
        self.counters.received_records.fetch_add(records.len() as u64, Ordering::Relaxed);
        let fresh: Vec<&[u8]> = {
            let seen = lock(&self.seen);
            records.iter().copied().filter(|r| !seen.set.contains(&record_id(r))).collect()
        };
        if fresh.is_empty() {
            return;
        }
        let mut forward = Vec::new();
        let mut lacking_parents = false;
        for chunk in fresh.chunks(RECORDS_PER_FRAME) {
            let outcomes = match self.tcb.ingest_records(chunk).await {
                Ok(o) => o,
                Err(_) => return,
            };
            for (r, o) in chunk.iter().zip(outcomes) {
                match o {
                    IngestOutcome::Accepted => {
                        self.counters.accepted.fetch_add(1, Ordering::Relaxed);
                        if lock(&self.seen).insert(record_id(r), self.cfg.seen_capacity) {
                            forward.push(r.to_vec());
                        }
                    }
                    IngestOutcome::Duplicate => {
                        lock(&self.seen).insert(record_id(r), self.cfg.seen_capacity);
                    }
                    IngestOutcome::Pending => lacking_parents = true,
                    _ => {
                        self.counters.refused.fetch_add(1, Ordering::Relaxed);
                    }
                }
            }
        }
        self.push(&forward, Some(from));
        if lacking_parents {
            self.pull_now.notify_one();
        }
    }

    /// Pulls what `peer`'s TCB has and ours lacks, through the peer's relay; returns how many
    /// records our TCB accepted.
    pub async fn pull_from(&self, peer: NodeId) -> Result<usize, ClientError> {
        self.counters.pulls.fetch_add(1, Ordering::Relaxed);
        let stream = self.transport.open(peer).await?;
        let remote = TcbClient::over(stream).await?.with_timeout(Duration::from_secs(5));
        let stats = sync::pull(&self.tcb, &remote).await;
        match stats {
            Ok(s) => {
                let n = s.accepted();
                self.counters.pulled_accepted.fetch_add(n as u64, Ordering::Relaxed);
                Ok(n)
            }
            Err(e) => {
                self.counters.pull_failures.fetch_add(1, Ordering::Relaxed);
                Err(e)
            }
        }
    }

    /// Takes the local TCB's current heads as the watcher's starting point: records already in
    /// the ledger are not news. [`Gossip::run`] does this itself if it has not been done; call it
    /// first when records written right after the start must be pushed.
    pub async fn prime(&self) -> Result<(), ClientError> {
        let heads = self.tcb.heads().await?;
        *self.watched.lock().await = Some(heads.heads.iter().copied().collect());
        Ok(())
    }

    /// One watcher step: if the local TCB's heads moved since it last looked, push the new
    /// records.
    pub async fn watch(&self) -> Result<(), ClientError> {
        let mut watched = self.watched.lock().await;
        let Some(last) = watched.as_ref() else {
            let heads = self.tcb.heads().await?;
            *watched = Some(heads.heads.iter().copied().collect());
            return Ok(());
        };
        let now = self.watch_step(last).await?;
        if now != *last {
            self.changed.notify_one();
            for s in lock(&self.subscribers).iter() {
                s.notify_one();
            }
        }
        *watched = Some(now);
        Ok(())
    }

    async fn watch_step(&self, last: &[Digest]) -> Result<Vec<Digest>, ClientError> {
        let heads = self.tcb.heads().await?;
        let now: Vec<Digest> = heads.heads.iter().copied().collect();
        if now == last {
            return Ok(now);
        }
        let mut have: Vec<Digest> = last.to_vec();
        let mut new = Vec::new();
        loop {
            have.truncate(HAVE_MAX);
            let answer = self.tcb.records_lacking(&have, RECORDS_PER_FRAME as u16).await?;
            if answer.records.is_empty() {
                break;
            }
            for r in &answer.records {
                let id = record_id(r);
                have.push(id);
                if lock(&self.seen).insert(id, self.cfg.seen_capacity) {
                    new.push(r.to_vec());
                }
            }
            if have.len() >= HAVE_MAX {
                // More new records than one watcher step can name: anti-entropy brings the rest.
                break;
            }
        }
        self.push(&new, None);
        Ok(now)
    }

    /// Runs the engine: datagrams from `inbound`, the watcher, anti-entropy and adverts, until
    /// `inbound` closes.
    pub async fn run(self: Arc<Self>, mut inbound: mpsc::Receiver<(NodeId, Vec<u8>)>) {
        let watcher = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.cfg.watch_every);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tick.tick().await;
                    let _ = me.watch().await;
                }
            })
        };
        let entropy = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                // The first pull waits a period (an interval's first tick is immediate).
                let first = tokio::time::Instant::now() + me.cfg.anti_entropy;
                let mut tick = tokio::time::interval_at(first, me.cfg.anti_entropy);
                tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
                loop {
                    tokio::select! {
                        _ = tick.tick() => {}
                        _ = me.pull_now.notified() => {}
                    }
                    if let Some(peer) = me.pick(1, None).first() {
                        let _ = me.pull_from(*peer).await;
                    }
                }
            })
        };
        let adverts = {
            let me = Arc::clone(&self);
            tokio::spawn(async move {
                let mut tick = tokio::time::interval(me.cfg.advert_every);
                loop {
                    tick.tick().await;
                    let datagram = {
                        let mut a = lock(&me.advert);
                        a.sequence += 1;
                        a.sent_unix_ms = now_unix_ms();
                        msg::encode_advert(&a)
                    };
                    let peers: Vec<NodeId> = lock(&me.peers).keys().copied().collect();
                    for p in peers {
                        me.transport.send(p, datagram.clone());
                    }
                }
            })
        };
        let mut timer_rx = lock(&self.timer_rx).take();
        loop {
            tokio::select! {
                d = inbound.recv() => match d {
                    Some((from, bytes)) => self.on_datagram(from, &bytes).await,
                    None => break,
                },
                Some(t) = async { match timer_rx.as_mut() { Some(rx) => rx.recv().await, None => None } } => {
                    let mut fx = Effects::default();
                    lock(&self.swim).timer(t, &mut fx);
                    self.apply(fx);
                }
            }
        }
        watcher.abort();
        entropy.abort();
        adverts.abort();
    }
}

fn lock<V>(m: &Mutex<V>) -> std::sync::MutexGuard<'_, V> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}
