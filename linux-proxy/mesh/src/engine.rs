//! The mesh task: one tokio task owns the UDP socket, every peer's WireGuard `Tunn`, the smoltcp
//! interface with its in-memory IP device and all smoltcp sockets. Handles talk to it through a
//! bounded command channel and, for streams, through [`Pipe`]s; a [`Notify`] wakes it.
//!
//! One turn of its loop: wait for a command, readable UDP, a wake-up or a timer; handle that
//! (at most [`RECV_BATCH`] datagrams: decrypt, check the inner source address, queue the inner
//! IP packet on the device); move bytes between pipes and sockets; poll smoltcp; encrypt every
//! IP packet smoltcp sent to the peer that owns its destination mesh IP; send the datagrams.

use crate::datagram::MeshDatagram;
use crate::stream::{Failure, MeshListener, MeshStream, Pipe};
use crate::{MeshConfig, MeshError, MeshStats, PeerInfo, PublicKey, StaticSecret};
use boringtun::noise::handshake::parse_handshake_anon;
use boringtun::noise::rate_limiter::RateLimiter;
use boringtun::noise::{Packet, Tunn, TunnResult};
use smoltcp::iface::{Config as IfaceConfig, Interface, PollResult, SocketHandle, SocketSet};
use smoltcp::phy::{self, Checksum, ChecksumCapabilities, Device, DeviceCapabilities, Medium};
use smoltcp::socket::{tcp, udp};
use smoltcp::wire::{HardwareAddress, IpAddress, IpCidr, IpEndpoint};
use std::collections::{HashMap, HashSet, VecDeque};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, SystemTime};
use tokio::net::UdpSocket;
use tokio::sync::{Notify, mpsc, oneshot};
use tokio::time::Instant;

/// How often WireGuard's timers run (handshake retries, keepalives, key expiry), as boringtun's
/// own device does.
const TIMER_TICK: Duration = Duration::from_millis(250);
/// Datagrams read from the UDP socket per turn before the stack runs.
pub(crate) const RECV_BATCH: usize = 64;
/// Largest UDP payload.
const MAX_DATAGRAM: usize = 65_535;
/// WireGuard's data overhead and smallest output buffer (`Tunn::encapsulate`'s contract).
const WG_OVERHEAD: usize = 32;
const WG_MIN_OUT: usize = 148;
/// Inner IP packets waiting for smoltcp to send; the device refuses more until the queue drains.
const DEVICE_TX_QUEUE: usize = 4096;
/// Rounds of (poll, encrypt, pump) per turn of the loop.
const STEP_ROUNDS: usize = 8;
/// Egress passes per round: each lets every socket emit one packet.
const EGRESS_PASSES: usize = 256;
/// Datagrams after which a turn stops stepping and sends.
const OUTBOX_TURN: usize = 512;
/// Handshake messages per second the mesh answers before it demands cookies (boringtun's
/// device uses the same figure).
const HANDSHAKE_RATE_LIMIT: u64 = 100;
/// A dropped stream whose connection has not closed by then is reset.
const STREAM_LINGER: Duration = Duration::from_secs(30);
/// Datagrams per UDP socket in smoltcp's buffers (each way).
const UDP_SOCKET_PACKETS: usize = 64;
/// Keep-alive interval of a stream while it has bytes to send (see `pump_streams`).
const PERSIST_INTERVAL: smoltcp::time::Duration = smoltcp::time::Duration::from_millis(200);
/// First local port for outgoing connections.
const EPHEMERAL_FIRST: u16 = 49_152;
/// Peer indices are 24 bits: boringtun shifts them left by 8 for its session ids.
const MAX_PEER_INDEX: u32 = (1 << 24) - 1;

/// Counters the task keeps and handles read.
#[derive(Default)]
pub(crate) struct Counters {
    datagrams_in: AtomicU64,
    datagrams_out: AtomicU64,
    handshakes_refused: AtomicU64,
    packets_invalid: AtomicU64,
    packets_unknown_session: AtomicU64,
    packets_spoofed: AtomicU64,
    no_route: AtomicU64,
    loss_dropped: AtomicU64,
    send_errors: AtomicU64,
    cookies_sent: AtomicU64,
    accept_overflow: AtomicU64,
}

fn bump(counter: &AtomicU64) {
    counter.fetch_add(1, Ordering::Relaxed);
}

impl Counters {
    pub fn snapshot(&self) -> MeshStats {
        let get = |c: &AtomicU64| c.load(Ordering::Relaxed);
        MeshStats {
            datagrams_in: get(&self.datagrams_in),
            datagrams_out: get(&self.datagrams_out),
            handshakes_refused: get(&self.handshakes_refused),
            packets_invalid: get(&self.packets_invalid),
            packets_unknown_session: get(&self.packets_unknown_session),
            packets_spoofed: get(&self.packets_spoofed),
            no_route: get(&self.no_route),
            loss_dropped: get(&self.loss_dropped),
            send_errors: get(&self.send_errors),
            cookies_sent: get(&self.cookies_sent),
            accept_overflow: get(&self.accept_overflow),
        }
    }
}

/// What the task shares with every handle.
pub(crate) struct Shared {
    pub notify: Notify,
    pub counters: Counters,
}

/// Requests from handles to the task.
pub(crate) enum Command {
    AddPeer { key: PublicKey, endpoint: SocketAddr, mesh_ip: IpAddr, reply: oneshot::Sender<Result<(), MeshError>> },
    RemovePeer { key: PublicKey, reply: oneshot::Sender<Result<(), MeshError>> },
    Peers { reply: oneshot::Sender<Vec<PeerInfo>> },
    Connect { to: SocketAddr, reply: oneshot::Sender<Result<MeshStream, MeshError>> },
    Listen { port: u16, reply: oneshot::Sender<Result<MeshListener, MeshError>> },
    BindUdp { port: u16, cmd: mpsc::Sender<Command>, reply: oneshot::Sender<Result<MeshDatagram, MeshError>> },
    UdpSend { handle: SocketHandle, to: SocketAddr, data: Vec<u8>, reply: oneshot::Sender<Result<(), MeshError>> },
}

/// The in-memory IP device between smoltcp and the tunnels: `rx` holds decrypted inner packets,
/// `tx` the packets smoltcp sent, which the task encrypts after each poll.
struct TunnelDevice {
    rx: VecDeque<Vec<u8>>,
    tx: VecDeque<Vec<u8>>,
    spare: Vec<Vec<u8>>,
    mtu: usize,
}

impl TunnelDevice {
    fn buffer(&mut self) -> Vec<u8> {
        self.spare.pop().unwrap_or_default()
    }

    fn recycle(&mut self, mut buf: Vec<u8>) {
        if self.spare.len() < 256 {
            buf.clear();
            self.spare.push(buf);
        }
    }
}

struct RxToken(Vec<u8>);
struct TxToken<'a> {
    queue: &'a mut VecDeque<Vec<u8>>,
    spare: &'a mut Vec<Vec<u8>>,
}

impl phy::RxToken for RxToken {
    fn consume<R, F: FnOnce(&[u8]) -> R>(self, f: F) -> R {
        f(&self.0)
    }
}

impl phy::TxToken for TxToken<'_> {
    fn consume<R, F: FnOnce(&mut [u8]) -> R>(self, len: usize, f: F) -> R {
        let mut buf = self.spare.pop().unwrap_or_default();
        buf.clear();
        buf.resize(len, 0);
        let r = f(&mut buf);
        self.queue.push_back(buf);
        r
    }
}

impl Device for TunnelDevice {
    type RxToken<'a> = RxToken;
    type TxToken<'a> = TxToken<'a>;

    fn receive(&mut self, _now: smoltcp::time::Instant) -> Option<(RxToken, TxToken<'_>)> {
        let packet = self.rx.pop_front()?;
        Some((RxToken(packet), TxToken { queue: &mut self.tx, spare: &mut self.spare }))
    }

    fn transmit(&mut self, _now: smoltcp::time::Instant) -> Option<TxToken<'_>> {
        if self.tx.len() >= DEVICE_TX_QUEUE {
            return None;
        }
        Some(TxToken { queue: &mut self.tx, spare: &mut self.spare })
    }

    fn capabilities(&self) -> DeviceCapabilities {
        let mut caps = DeviceCapabilities::default();
        caps.medium = Medium::Ip;
        caps.max_transmission_unit = self.mtu;
        // Inner packets are authenticated by WireGuard's AEAD, so checking their checksums again
        // buys nothing; they are still computed on the way out, for peers that do check.
        let mut checksum = ChecksumCapabilities::default();
        checksum.ipv4 = Checksum::Tx;
        checksum.udp = Checksum::Tx;
        checksum.tcp = Checksum::Tx;
        checksum.icmpv4 = Checksum::Tx;
        checksum.icmpv6 = Checksum::Tx;
        caps.checksum = checksum;
        caps
    }
}

/// Encrypted datagrams waiting to be sent at the end of the turn, in one reused buffer.
#[derive(Default)]
struct Outbox {
    buf: Vec<u8>,
    items: Vec<(SocketAddr, usize, usize)>,
}

impl Outbox {
    fn push(&mut self, to: SocketAddr, data: &[u8]) {
        let start = self.buf.len();
        self.buf.extend_from_slice(data);
        self.items.push((to, start, data.len()));
    }

    /// Room for `n` bytes at the end; returns where it starts.
    fn reserve(&mut self, n: usize) -> usize {
        let start = self.buf.len();
        self.buf.resize(start + n, 0);
        start
    }

    fn commit(&mut self, to: SocketAddr, start: usize, n: usize) {
        self.buf.truncate(start + n);
        self.items.push((to, start, n));
    }

    fn rollback(&mut self, start: usize) {
        self.buf.truncate(start);
    }
}

/// The loss knob's generator: SplitMix64, seeded, so a run is repeatable.
struct LossRng(u64);

impl LossRng {
    fn next_f64(&mut self) -> f64 {
        self.0 = self.0.wrapping_add(0x9e37_79b9_7f4a_7c15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
        z ^= z >> 31;
        (z >> 11) as f64 / (1u64 << 53) as f64
    }
}

struct Peer {
    key: PublicKey,
    endpoint: SocketAddr,
    mesh_ip: IpAddr,
    index: u32,
    tunn: Box<Tunn>,
}

struct StreamEntry {
    pipe: Arc<Pipe>,
    remote: SocketAddr,
    /// Our port if we chose it (outgoing connection), to free when the entry goes.
    ephemeral: Option<u16>,
    fin_seen: bool,
    close_sent: bool,
    dropped_at: Option<Instant>,
}

struct Connecting {
    handle: SocketHandle,
    to: SocketAddr,
    port: u16,
    deadline: Instant,
    reply: oneshot::Sender<Result<MeshStream, MeshError>>,
}

struct ListenerEntry {
    sockets: Vec<SocketHandle>,
    accepted: mpsc::Sender<MeshStream>,
}

struct UdpEntry {
    delivered: mpsc::Sender<(SocketAddr, Vec<u8>)>,
}

/// Settings the task needs from [`MeshConfig`].
struct Settings {
    mtu: usize,
    tcp_buffer: usize,
    stream_buffer: usize,
    connect_timeout: Duration,
    tcp_idle_timeout: Duration,
    tcp_keepalive: Duration,
    listen_backlog: usize,
    max_sockets: usize,
    datagram_queue: usize,
    persistent_keepalive: Option<u16>,
    loss: f64,
}

pub(crate) struct Engine {
    settings: Settings,
    secret: StaticSecret,
    public: PublicKey,
    mesh_ip: IpAddr,
    udp: UdpSocket,
    shared: Arc<Shared>,
    limiter: RateLimiter,
    // Keyed by the key's bytes: `PublicKey`'s own `Hash` canonicalises a field element each time.
    peers: HashMap<[u8; 32], Peer>,
    by_index: HashMap<u32, [u8; 32]>,
    by_ip: HashMap<IpAddr, [u8; 32]>,
    next_index: u32,
    iface: Interface,
    dev: TunnelDevice,
    sockets: SocketSet<'static>,
    streams: HashMap<SocketHandle, StreamEntry>,
    connecting: Vec<Connecting>,
    listeners: HashMap<u16, ListenerEntry>,
    udps: HashMap<SocketHandle, UdpEntry>,
    ports_in_use: HashSet<u16>,
    next_ephemeral: u16,
    outbox: Outbox,
    recv_buf: Vec<u8>,
    tunnel_buf: Vec<u8>,
    rng: LossRng,
    clock: std::time::Instant,
}

/// The largest UDP payload inside the tunnel for a mesh of this address family and MTU.
pub(crate) fn max_datagram_payload(mesh_ip: IpAddr, mtu: usize) -> usize {
    let headers = if mesh_ip.is_ipv4() { 20 + 8 } else { 40 + 8 };
    mtu.saturating_sub(headers)
}

impl Engine {
    pub fn new(cfg: MeshConfig, udp: UdpSocket, shared: Arc<Shared>, seed: u64) -> Self {
        let MeshConfig {
            private_key,
            listen: _,
            mesh_ip,
            mtu,
            tcp_buffer,
            stream_buffer,
            connect_timeout,
            tcp_idle_timeout,
            tcp_keepalive,
            listen_backlog,
            max_sockets,
            datagram_queue,
            udp_socket_buffer: _,
            persistent_keepalive,
            loss,
            loss_seed,
        } = cfg;
        let public = PublicKey::from(&private_key);
        let mut dev = TunnelDevice { rx: VecDeque::new(), tx: VecDeque::new(), spare: Vec::new(), mtu };
        let mut config = IfaceConfig::new(HardwareAddress::Ip);
        config.random_seed = seed;
        let clock = std::time::Instant::now();
        let mut iface = Interface::new(config, &mut dev, smoltcp::time::Instant::from_micros(0));
        iface.update_ip_addrs(|addrs| {
            let prefix = if mesh_ip.is_ipv4() { 32 } else { 128 };
            // One address: cannot overflow the interface's address table.
            let _ = addrs.push(IpCidr::new(IpAddress::from(mesh_ip), prefix));
        });
        // Every other mesh IP is "reachable through the tunnels"; with an IP medium the gateway
        // is never used, it only tells smoltcp that a destination has a route.
        let _ = match mesh_ip {
            IpAddr::V4(a) => iface.routes_mut().add_default_ipv4_route(a).map(|_| ()),
            IpAddr::V6(a) => iface.routes_mut().add_default_ipv6_route(a).map(|_| ()),
        };
        Self {
            settings: Settings {
                mtu,
                tcp_buffer,
                stream_buffer,
                connect_timeout,
                tcp_idle_timeout,
                tcp_keepalive,
                listen_backlog,
                max_sockets,
                datagram_queue,
                persistent_keepalive,
                loss,
            },
            limiter: RateLimiter::new(&public, HANDSHAKE_RATE_LIMIT),
            secret: private_key,
            public,
            mesh_ip,
            udp,
            shared,
            peers: HashMap::new(),
            by_index: HashMap::new(),
            by_ip: HashMap::new(),
            next_index: 1,
            iface,
            dev,
            sockets: SocketSet::new(Vec::new()),
            streams: HashMap::new(),
            connecting: Vec::new(),
            listeners: HashMap::new(),
            udps: HashMap::new(),
            ports_in_use: HashSet::new(),
            next_ephemeral: EPHEMERAL_FIRST,
            outbox: Outbox::default(),
            recv_buf: vec![0u8; MAX_DATAGRAM],
            tunnel_buf: vec![0u8; MAX_DATAGRAM + WG_OVERHEAD],
            rng: LossRng(loss_seed),
            clock,
        }
    }

    fn now(&self) -> smoltcp::time::Instant {
        smoltcp::time::Instant::from_micros(self.clock.elapsed().as_micros() as i64)
    }

    pub async fn run(mut self, mut commands: mpsc::Receiver<Command>, mut shutdown: oneshot::Receiver<()>) {
        enum Event {
            Stop,
            Command(Command),
            Readable,
            Wake,
        }
        let mut next_tick = Instant::now() + TIMER_TICK;
        loop {
            let wake_at = self.next_wake(next_tick);
            let event = tokio::select! {
                biased;
                _ = &mut shutdown => Event::Stop,
                c = commands.recv() => c.map_or(Event::Stop, Event::Command),
                _ = self.udp.readable() => Event::Readable,
                _ = self.shared.notify.notified() => Event::Wake,
                _ = tokio::time::sleep_until(wake_at) => Event::Wake,
            };
            match event {
                Event::Stop => break,
                Event::Command(c) => self.command(c),
                Event::Readable => self.receive_batch(),
                Event::Wake => {}
            }
            if Instant::now() >= next_tick {
                self.tick();
                next_tick = Instant::now() + TIMER_TICK;
            }
            self.step();
            self.flush().await;
        }
        self.stop();
    }

    /// When the loop must run again without an event: smoltcp's next deadline or the timer tick.
    fn next_wake(&mut self, next_tick: Instant) -> Instant {
        let now = self.now();
        match self.iface.poll_delay(now, &self.sockets) {
            Some(d) => next_tick.min(Instant::now() + Duration::from_micros(d.total_micros())),
            None => next_tick,
        }
    }

    // ---- commands ----

    fn command(&mut self, command: Command) {
        match command {
            Command::AddPeer { key, endpoint, mesh_ip, reply } => {
                let _ = reply.send(self.add_peer(key, endpoint, mesh_ip));
            }
            Command::RemovePeer { key, reply } => {
                let _ = reply.send(self.remove_peer(&key));
            }
            Command::Peers { reply } => {
                let _ = reply.send(self.peer_list());
            }
            Command::Connect { to, reply } => self.connect(to, reply),
            Command::Listen { port, reply } => {
                let _ = reply.send(self.listen(port));
            }
            Command::BindUdp { port, cmd, reply } => {
                let _ = reply.send(self.bind_udp(port, cmd));
            }
            Command::UdpSend { handle, to, data, reply } => {
                let _ = reply.send(self.udp_send(handle, to, &data));
            }
        }
    }

    fn add_peer(&mut self, key: PublicKey, endpoint: SocketAddr, mesh_ip: IpAddr) -> Result<(), MeshError> {
        if key == self.public {
            return Err(MeshError::OwnKey);
        }
        if !self.secret.diffie_hellman(&key).was_contributory() {
            return Err(MeshError::InvalidPeerKey);
        }
        if self.peers.contains_key(key.as_bytes()) {
            return Err(MeshError::PeerExists(crate::keys::encode_public_key(&key)));
        }
        if mesh_ip.is_ipv4() != self.mesh_ip.is_ipv4() {
            return Err(MeshError::AddressFamily(mesh_ip));
        }
        if !crate::usable_mesh_ip(mesh_ip) {
            return Err(MeshError::InvalidMeshIp(mesh_ip));
        }
        if mesh_ip == self.mesh_ip || self.by_ip.contains_key(&mesh_ip) {
            return Err(MeshError::MeshIpInUse(mesh_ip));
        }
        if self.peers.len() as u32 >= MAX_PEER_INDEX {
            return Err(MeshError::TooManyPeers);
        }
        let index = loop {
            let candidate = self.next_index;
            self.next_index = if candidate >= MAX_PEER_INDEX { 1 } else { candidate + 1 };
            if !self.by_index.contains_key(&candidate) {
                break candidate;
            }
        };
        let mut tunn =
            Box::new(Tunn::new(self.secret.clone(), key, None, self.settings.persistent_keepalive, index, None));
        // Handshake at once rather than at the first packet: `peers()` then shows who answers,
        // and a peer that still holds a session we have forgotten (we removed and re-added it)
        // moves to the new one now instead of after its own rekey timeout.
        if let TunnResult::WriteToNetwork(init) = tunn.format_handshake_initiation(&mut self.tunnel_buf, false) {
            self.outbox.push(endpoint, init);
        }
        self.by_index.insert(index, key.to_bytes());
        self.by_ip.insert(mesh_ip, key.to_bytes());
        self.peers.insert(key.to_bytes(), Peer { key, endpoint, mesh_ip, index, tunn });
        Ok(())
    }

    /// Forgets a peer at once: its `Tunn` (and every session key) is dropped, its streams fail,
    /// and from now on its handshakes are refused like a stranger's.
    fn remove_peer(&mut self, key: &PublicKey) -> Result<(), MeshError> {
        let peer = self
            .peers
            .remove(key.as_bytes())
            .ok_or_else(|| MeshError::UnknownPeer(crate::keys::encode_public_key(key)))?;
        self.by_index.remove(&peer.index);
        self.by_ip.remove(&peer.mesh_ip);
        let ip = peer.mesh_ip;
        for (handle, entry) in &mut self.streams {
            if entry.remote.ip() == ip {
                self.sockets.get_mut::<tcp::Socket>(*handle).abort();
                entry.pipe.lock().fail(Failure::PeerRemoved);
            }
        }
        let mut i = 0;
        while i < self.connecting.len() {
            if self.connecting[i].to.ip() == ip {
                let c = self.connecting.swap_remove(i);
                self.sockets.remove(c.handle);
                self.ports_in_use.remove(&c.port);
                let _ = c.reply.send(Err(MeshError::PeerRemoved));
            } else {
                i += 1;
            }
        }
        for listener in self.listeners.values() {
            for handle in &listener.sockets {
                let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
                if socket.remote_endpoint().is_some_and(|e| IpAddr::from(e.addr) == ip) {
                    socket.abort();
                }
            }
        }
        Ok(())
    }

    fn peer_list(&self) -> Vec<PeerInfo> {
        let now = SystemTime::now();
        let mut list: Vec<PeerInfo> = self
            .peers
            .values()
            .map(|p| {
                let (since, tx, rx, _, _) = p.tunn.stats();
                PeerInfo {
                    public_key: p.key,
                    endpoint: p.endpoint,
                    mesh_ip: p.mesh_ip,
                    last_handshake: since.and_then(|d| now.checked_sub(d)),
                    bytes_in: rx as u64,
                    bytes_out: tx as u64,
                }
            })
            .collect();
        list.sort_by_key(|p| p.mesh_ip);
        list
    }

    fn new_tcp_socket(&self) -> tcp::Socket<'static> {
        let s = &self.settings;
        let mut socket = tcp::Socket::new(
            tcp::SocketBuffer::new(vec![0u8; s.tcp_buffer]),
            tcp::SocketBuffer::new(vec![0u8; s.tcp_buffer]),
        );
        socket.set_nagle_enabled(false);
        socket.set_timeout(Some(smoltcp::time::Duration::from_micros(s.tcp_idle_timeout.as_micros() as u64)));
        socket.set_keep_alive(Some(smoltcp::time::Duration::from_micros(s.tcp_keepalive.as_micros() as u64)));
        // Reno backs off after a loss; without congestion control smoltcp resends whole windows.
        socket.set_congestion_control(tcp::CongestionControl::Reno);
        socket
    }

    fn check_capacity(&self, more: usize) -> Result<(), MeshError> {
        if self.sockets.iter().count() + more > self.settings.max_sockets {
            return Err(MeshError::TooManySockets(self.settings.max_sockets));
        }
        Ok(())
    }

    fn connect(&mut self, to: SocketAddr, reply: oneshot::Sender<Result<MeshStream, MeshError>>) {
        let started = (|| {
            if to.port() == 0 {
                return Err(MeshError::InvalidPort);
            }
            if !self.by_ip.contains_key(&to.ip()) {
                return Err(MeshError::NoRoute(to.ip()));
            }
            self.check_capacity(1)?;
            let port = self.ephemeral_port()?;
            let mut socket = self.new_tcp_socket();
            if let Err(e) = socket.connect(self.iface.context(), IpEndpoint::from(to), port) {
                return Err(MeshError::Connect(to, e.to_string()));
            }
            self.ports_in_use.insert(port);
            Ok((self.sockets.add(socket), port))
        })();
        match started {
            Ok((handle, port)) => self.connecting.push(Connecting {
                handle,
                to,
                port,
                deadline: Instant::now() + self.settings.connect_timeout,
                reply,
            }),
            Err(e) => {
                let _ = reply.send(Err(e));
            }
        }
    }

    fn ephemeral_port(&mut self) -> Result<u16, MeshError> {
        for _ in 0..=(u16::MAX - EPHEMERAL_FIRST) {
            let port = self.next_ephemeral;
            self.next_ephemeral = if port == u16::MAX { EPHEMERAL_FIRST } else { port + 1 };
            if !self.ports_in_use.contains(&port) && !self.listeners.contains_key(&port) {
                return Ok(port);
            }
        }
        Err(MeshError::TooManySockets(self.settings.max_sockets))
    }

    fn listen(&mut self, port: u16) -> Result<MeshListener, MeshError> {
        if port == 0 {
            return Err(MeshError::InvalidPort);
        }
        if self.listeners.contains_key(&port) || self.ports_in_use.contains(&port) {
            return Err(MeshError::PortInUse(port));
        }
        let backlog = self.settings.listen_backlog.max(1);
        self.check_capacity(backlog)?;
        let mut sockets = Vec::with_capacity(backlog);
        for _ in 0..backlog {
            sockets.push(self.new_listening_socket(port)?);
        }
        let (accepted, rx) = mpsc::channel(backlog);
        self.listeners.insert(port, ListenerEntry { sockets, accepted });
        Ok(MeshListener::new(port, rx))
    }

    fn new_listening_socket(&mut self, port: u16) -> Result<SocketHandle, MeshError> {
        let mut socket = self.new_tcp_socket();
        socket.listen(port).map_err(|e| MeshError::Listen(port, e.to_string()))?;
        Ok(self.sockets.add(socket))
    }

    fn bind_udp(&mut self, port: u16, cmd: mpsc::Sender<Command>) -> Result<MeshDatagram, MeshError> {
        if port == 0 {
            return Err(MeshError::InvalidPort);
        }
        let taken = self.udps.keys().any(|h| self.sockets.get::<udp::Socket>(*h).endpoint().port == port);
        if taken {
            return Err(MeshError::PortInUse(port));
        }
        self.check_capacity(1)?;
        let max = max_datagram_payload(self.mesh_ip, self.settings.mtu);
        let buffer = || {
            udp::PacketBuffer::new(
                vec![udp::PacketMetadata::EMPTY; UDP_SOCKET_PACKETS],
                vec![0u8; UDP_SOCKET_PACKETS * max.max(1)],
            )
        };
        let mut socket = udp::Socket::new(buffer(), buffer());
        socket.bind(port).map_err(|e| MeshError::Listen(port, e.to_string()))?;
        let handle = self.sockets.add(socket);
        let (delivered, rx) = mpsc::channel(self.settings.datagram_queue.max(1));
        self.udps.insert(handle, UdpEntry { delivered });
        Ok(MeshDatagram::new(port, max, handle, cmd, Arc::clone(&self.shared), rx))
    }

    fn udp_send(&mut self, handle: SocketHandle, to: SocketAddr, data: &[u8]) -> Result<(), MeshError> {
        if !self.udps.contains_key(&handle) {
            return Err(MeshError::Stopped);
        }
        if to.port() == 0 {
            return Err(MeshError::InvalidPort);
        }
        if !self.by_ip.contains_key(&to.ip()) {
            return Err(MeshError::NoRoute(to.ip()));
        }
        match self.sockets.get_mut::<udp::Socket>(handle).send_slice(data, IpEndpoint::from(to)) {
            Ok(()) => Ok(()),
            Err(udp::SendError::BufferFull) => Err(MeshError::Congested),
            Err(udp::SendError::Unaddressable) => Err(MeshError::NoRoute(to.ip())),
        }
    }

    // ---- the network side ----

    fn receive_batch(&mut self) {
        let mut buf = std::mem::take(&mut self.recv_buf);
        for _ in 0..RECV_BATCH {
            match self.udp.try_recv_from(&mut buf) {
                Ok((n, from)) => {
                    bump(&self.shared.counters.datagrams_in);
                    self.handle_datagram(from, &buf[..n]);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => break,
                // An ICMP error for something we sent earlier, or similar: nothing to do here.
                Err(_) => bump(&self.shared.counters.send_errors),
            }
        }
        self.recv_buf = buf;
    }

    /// One datagram from the network. Hostile input ends here as a counter, never a panic.
    fn handle_datagram(&mut self, from: SocketAddr, data: &[u8]) {
        let counters = &self.shared.counters;
        // MAC1 (proves the sender knows our public key) and, under load, the cookie, before any
        // Diffie-Hellman is spent on a handshake.
        let mut cookie = [0u8; 64];
        let packet = match self.limiter.verify_packet(Some(from.ip()), data, &mut cookie) {
            Ok(packet) => packet,
            Err(TunnResult::WriteToNetwork(reply)) => {
                bump(&counters.cookies_sent);
                self.outbox.push(from, reply);
                return;
            }
            Err(_) => {
                bump(&counters.packets_invalid);
                return;
            }
        };
        let receiver = match &packet {
            Packet::HandshakeInit(init) => match parse_handshake_anon(&self.secret, &self.public, init) {
                Ok(half) => {
                    let key = half.peer_static_public;
                    if !self.peers.contains_key(&key) {
                        // Not (or no longer) a peer: refused before any state is touched.
                        bump(&counters.handshakes_refused);
                        return;
                    }
                    key
                }
                Err(_) => {
                    bump(&counters.packets_invalid);
                    return;
                }
            },
            Packet::HandshakeResponse(p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => *key,
                None => {
                    bump(&counters.packets_unknown_session);
                    return;
                }
            },
            Packet::PacketCookieReply(p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => *key,
                None => {
                    bump(&counters.packets_unknown_session);
                    return;
                }
            },
            Packet::PacketData(p) => match self.by_index.get(&(p.receiver_idx >> 8)) {
                Some(key) => *key,
                None => {
                    bump(&counters.packets_unknown_session);
                    return;
                }
            },
        };
        let Some(peer) = self.peers.get_mut(&receiver) else { return };
        let mut result = peer.tunn.decapsulate(Some(from.ip()), data, &mut self.tunnel_buf);
        loop {
            match result {
                TunnResult::Done => break,
                TunnResult::Err(_) => {
                    bump(&counters.packets_invalid);
                    break;
                }
                TunnResult::WriteToNetwork(out) => {
                    if out.len() >= 4 && out[..4] == [3, 0, 0, 0] {
                        // The peer's own rate limiter answered with a cookie: unauthenticated,
                        // so it goes back to the sender and moves nothing.
                        bump(&counters.cookies_sent);
                        self.outbox.push(from, out);
                        break;
                    }
                    // A handshake answer or queued data: the datagram authenticated as this
                    // peer, so follow it to where it came from (WireGuard roaming).
                    peer.endpoint = from;
                    self.outbox.push(from, out);
                    // Send whatever waited for the handshake.
                    result = peer.tunn.decapsulate(None, &[], &mut self.tunnel_buf);
                }
                TunnResult::WriteToTunnelV4(inner, src) => {
                    deliver(&mut self.dev, peer, from, inner, IpAddr::V4(src), counters);
                    break;
                }
                TunnResult::WriteToTunnelV6(inner, src) => {
                    deliver(&mut self.dev, peer, from, inner, IpAddr::V6(src), counters);
                    break;
                }
            }
        }
    }

    /// Runs WireGuard's timers for every peer.
    fn tick(&mut self) {
        self.limiter.reset_count();
        for peer in self.peers.values_mut() {
            if let TunnResult::WriteToNetwork(out) = peer.tunn.update_timers(&mut self.tunnel_buf) {
                self.outbox.push(peer.endpoint, out);
            }
        }
    }

    /// Encrypts every inner packet smoltcp sent, for the peer that owns its destination.
    fn route_outgoing(&mut self) -> bool {
        let mut any = false;
        while let Some(packet) = self.dev.tx.pop_front() {
            any = true;
            let peer =
                Tunn::dst_address(&packet).and_then(|ip| self.by_ip.get(&ip)).and_then(|k| self.peers.get_mut(k));
            match peer {
                None => bump(&self.shared.counters.no_route),
                Some(peer) => {
                    let start = self.outbox.reserve((packet.len() + WG_OVERHEAD).max(WG_MIN_OUT));
                    match peer.tunn.encapsulate(&packet, &mut self.outbox.buf[start..]) {
                        TunnResult::WriteToNetwork(out) => {
                            let n = out.len();
                            self.outbox.commit(peer.endpoint, start, n);
                        }
                        // Queued in the Tunn until its handshake completes, or refused.
                        _ => self.outbox.rollback(start),
                    }
                }
            }
            self.dev.recycle(packet);
        }
        any
    }

    /// Sends the outbox. The loss knob drops datagrams here, and only here.
    async fn flush(&mut self) {
        let counters = &self.shared.counters;
        for &(to, start, n) in &self.outbox.items {
            if self.settings.loss > 0.0 && self.rng.next_f64() < self.settings.loss {
                bump(&counters.loss_dropped);
                continue;
            }
            let data = &self.outbox.buf[start..start + n];
            let sent = match self.udp.try_send_to(data, to) {
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => self.udp.send_to(data, to).await,
                other => other,
            };
            match sent {
                Ok(_) => bump(&counters.datagrams_out),
                Err(_) => bump(&counters.send_errors),
            }
        }
        self.outbox.items.clear();
        self.outbox.buf.clear();
    }

    // ---- the stack ----

    /// Moves bytes between pipes and sockets and runs smoltcp until nothing is left to do or a
    /// turn's worth of datagrams is ready, whichever comes first (so one busy stream cannot hold
    /// the loop, and the outbox stays bounded).
    fn step(&mut self) {
        self.pump();
        for _ in 0..STEP_ROUNDS {
            let now = self.now();
            let mut changed = self.iface.poll(now, &mut self.dev, &mut self.sockets) == PollResult::SocketStateChanged;
            // smoltcp emits at most one packet per socket per egress pass: repeat it.
            for _ in 0..EGRESS_PASSES {
                if self.dev.tx.len() >= DEVICE_TX_QUEUE
                    || self.iface.poll_egress(now, &mut self.dev, &mut self.sockets) == PollResult::None
                {
                    break;
                }
                changed = true;
            }
            let sent = self.route_outgoing();
            let moved = self.pump();
            if (!moved && !sent && !changed) || self.outbox.items.len() >= OUTBOX_TURN {
                break;
            }
        }
    }

    /// Services every stream, pending connection, listener and datagram socket. Returns whether
    /// any bytes or state moved.
    fn pump(&mut self) -> bool {
        let mut moved = self.pump_streams();
        moved |= self.pump_connecting();
        moved |= self.pump_listeners();
        self.pump_udp();
        moved
    }

    fn pump_streams(&mut self) -> bool {
        let mut moved = false;
        let mut finished = Vec::new();
        let now = Instant::now();
        let keepalive = smoltcp::time::Duration::from_micros(self.settings.tcp_keepalive.as_micros() as u64);
        for (handle, entry) in &mut self.streams {
            let socket = self.sockets.get_mut::<tcp::Socket>(*handle);
            let mut p = entry.pipe.lock();
            let state = socket.state();
            if matches!(state, tcp::State::CloseWait | tcp::State::LastAck | tcp::State::Closing | tcp::State::TimeWait)
            {
                entry.fin_seen = true;
            }

            // smoltcp 0.12 has no zero-window probe: if the one ACK that reopens a closed window
            // is lost, the sender waits for its keep-alive. While bytes wait to be sent, keep
            // the keep-alive short so it serves as the persist timer.
            let keep_alive = if socket.send_queue() > 0 || !p.tx.is_empty() { PERSIST_INTERVAL } else { keepalive };
            if socket.keep_alive() != Some(keep_alive) {
                socket.set_keep_alive(Some(keep_alive));
            }

            // Writer to socket.
            if !p.tx.is_empty() && socket.may_send() {
                let before = p.tx.len();
                for _ in 0..2 {
                    if p.tx.is_empty() || !socket.can_send() {
                        break;
                    }
                    let _ = socket.send(|buf| (p.tx.dequeue_slice(buf), ()));
                }
                if p.tx.len() != before {
                    moved = true;
                    p.wake_writer();
                }
            }
            if p.shutdown && p.tx.is_empty() && !entry.close_sent {
                socket.close();
                entry.close_sent = true;
                p.write_closed = true;
                moved = true;
            }

            // Socket to reader.
            if p.dropped {
                while socket.can_recv() {
                    let _ = socket.recv(|buf| (buf.len(), ()));
                }
            } else {
                let before = p.rx.len();
                for _ in 0..2 {
                    if !socket.can_recv() || p.rx.is_full() {
                        break;
                    }
                    let _ = socket.recv(|buf| (p.rx.enqueue_slice(buf), ()));
                }
                if p.rx.len() != before {
                    moved = true;
                    p.wake_reader();
                }
                p.rx_blocked = socket.can_recv();
            }
            if !socket.can_recv() && !socket.may_recv() && !p.eof && p.failure.is_none() {
                if entry.fin_seen {
                    p.eof = true;
                    p.wake_reader();
                } else if state == tcp::State::Closed {
                    p.fail(Failure::Reset);
                }
            }
            if matches!(state, tcp::State::Closed | tcp::State::TimeWait) && !p.write_closed {
                p.write_closed = true;
                p.wake_writer();
            }

            if p.dropped {
                let since = *entry.dropped_at.get_or_insert(now);
                if matches!(state, tcp::State::Closed | tcp::State::TimeWait) {
                    finished.push(*handle);
                } else if now.duration_since(since) >= STREAM_LINGER {
                    // The RST goes out at the next poll; the entry goes once it is Closed.
                    socket.abort();
                    moved = true;
                }
            }
        }
        for handle in finished {
            self.sockets.remove(handle);
            if let Some(entry) = self.streams.remove(&handle)
                && let Some(port) = entry.ephemeral
            {
                self.ports_in_use.remove(&port);
            }
        }
        moved
    }

    fn pump_connecting(&mut self) -> bool {
        let mut moved = false;
        let now = Instant::now();
        let mut i = 0;
        while i < self.connecting.len() {
            let c = &self.connecting[i];
            let socket = self.sockets.get_mut::<tcp::Socket>(c.handle);
            let outcome = match socket.state() {
                tcp::State::SynSent | tcp::State::SynReceived => {
                    if now >= c.deadline {
                        socket.abort();
                        Some(Err(MeshError::ConnectTimeout(c.to, self.settings.connect_timeout)))
                    } else if c.reply.is_closed() {
                        socket.abort();
                        Some(Err(MeshError::Stopped))
                    } else {
                        None
                    }
                }
                tcp::State::Closed => Some(Err(MeshError::ConnectionRefused(c.to))),
                _ => Some(Ok(())),
            };
            let Some(outcome) = outcome else {
                i += 1;
                continue;
            };
            moved = true;
            let c = self.connecting.swap_remove(i);
            match outcome {
                Ok(()) => {
                    let pipe = Pipe::new(self.settings.stream_buffer);
                    let local = SocketAddr::new(self.mesh_ip, c.port);
                    let stream = MeshStream::new(Arc::clone(&pipe), Arc::clone(&self.shared), local, c.to);
                    self.streams.insert(
                        c.handle,
                        StreamEntry {
                            pipe,
                            remote: c.to,
                            ephemeral: Some(c.port),
                            fin_seen: false,
                            close_sent: false,
                            dropped_at: None,
                        },
                    );
                    // If the caller gave up, the stream drops here and closes like any other.
                    let _ = c.reply.send(Ok(stream));
                }
                Err(e) => {
                    self.sockets.remove(c.handle);
                    self.ports_in_use.remove(&c.port);
                    let _ = c.reply.send(Err(e));
                }
            }
        }
        moved
    }

    fn pump_listeners(&mut self) -> bool {
        let mut moved = false;
        let mut refill = Vec::new();
        let mut closed = Vec::new();
        for (&port, listener) in &mut self.listeners {
            if listener.accepted.is_closed() {
                closed.push(port);
                continue;
            }
            let mut i = 0;
            while i < listener.sockets.len() {
                let handle = listener.sockets[i];
                let socket = self.sockets.get_mut::<tcp::Socket>(handle);
                match socket.state() {
                    tcp::State::Listen | tcp::State::SynReceived => {
                        i += 1;
                        continue;
                    }
                    tcp::State::Closed => {
                        // Reset during the handshake (or aborted): listen again.
                        let _ = socket.listen(port);
                        i += 1;
                        continue;
                    }
                    _ => {}
                }
                moved = true;
                listener.sockets.swap_remove(i);
                refill.push(port);
                let remote = socket.remote_endpoint().map(|e| SocketAddr::new(IpAddr::from(e.addr), e.port));
                let remote = remote.unwrap_or_else(|| SocketAddr::new(self.mesh_ip, 0));
                let pipe = Pipe::new(self.settings.stream_buffer);
                let local = SocketAddr::new(self.mesh_ip, port);
                let stream = MeshStream::new(Arc::clone(&pipe), Arc::clone(&self.shared), local, remote);
                self.streams.insert(
                    handle,
                    StreamEntry { pipe, remote, ephemeral: None, fin_seen: false, close_sent: false, dropped_at: None },
                );
                if listener.accepted.try_send(stream).is_err() {
                    // Queue full: reset it; the dropped stream's entry goes at the next pump.
                    bump(&self.shared.counters.accept_overflow);
                    socket.abort();
                }
            }
        }
        for port in closed {
            if let Some(listener) = self.listeners.remove(&port) {
                for handle in listener.sockets {
                    self.sockets.remove(handle);
                }
            }
        }
        // A listening socket for each one that became a connection.
        for port in refill {
            if let Ok(handle) = self.new_listening_socket(port)
                && let Some(listener) = self.listeners.get_mut(&port)
            {
                listener.sockets.push(handle);
            }
        }
        moved
    }

    fn pump_udp(&mut self) {
        let mut closed = Vec::new();
        for (handle, entry) in &self.udps {
            if entry.delivered.is_closed() {
                closed.push(*handle);
                continue;
            }
            let socket = self.sockets.get_mut::<udp::Socket>(*handle);
            while socket.can_recv() {
                let Ok(permit) = entry.delivered.try_reserve() else { break };
                if let Ok((data, meta)) = socket.recv() {
                    permit.send((SocketAddr::new(IpAddr::from(meta.endpoint.addr), meta.endpoint.port), data.to_vec()));
                }
            }
        }
        for handle in closed {
            self.udps.remove(&handle);
            self.sockets.remove(handle);
        }
    }

    /// The task is ending: every stream learns it, every waiting caller gets an error (their
    /// reply channels drop), listeners and datagram sockets see their channels close.
    fn stop(&mut self) {
        for entry in self.streams.values() {
            entry.pipe.lock().fail(Failure::MeshStopped);
        }
    }
}

/// Hands a decrypted inner packet to smoltcp if its source is the peer's mesh IP (WireGuard's
/// cryptokey routing: a peer may only speak as itself).
fn deliver(dev: &mut TunnelDevice, peer: &mut Peer, from: SocketAddr, inner: &[u8], src: IpAddr, counters: &Counters) {
    if src != peer.mesh_ip {
        bump(&counters.packets_spoofed);
        return;
    }
    peer.endpoint = from;
    if dev.rx.len() >= RECV_BATCH * 4 {
        // smoltcp drains this after every batch; more means something is wrong: drop.
        bump(&counters.packets_invalid);
        return;
    }
    let mut buf = dev.buffer();
    buf.extend_from_slice(inner);
    dev.rx.push_back(buf);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loss_generator_is_seeded_and_uniform() {
        let draws = |seed| {
            let mut rng = LossRng(seed);
            (0..100_000).map(|_| rng.next_f64()).collect::<Vec<_>>()
        };
        let a = draws(7);
        assert_eq!(a, draws(7));
        assert_ne!(a, draws(8));
        assert!(a.iter().all(|x| (0.0..1.0).contains(x)));
        let dropped = a.iter().filter(|x| **x < 0.05).count();
        assert!((4_500..5_500).contains(&dropped), "{dropped}");
    }

    #[test]
    fn outbox_reserves_commits_and_rolls_back() {
        let to: SocketAddr = "127.0.0.1:1".parse().unwrap();
        let mut o = Outbox::default();
        o.push(to, b"abc");
        let start = o.reserve(10);
        o.buf[start..start + 2].copy_from_slice(b"de");
        o.commit(to, start, 2);
        let start = o.reserve(10);
        o.rollback(start);
        assert_eq!(o.buf, b"abcde");
        assert_eq!(o.items, vec![(to, 0, 3), (to, 3, 2)]);
    }
}
