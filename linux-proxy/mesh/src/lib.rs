//! The untrusted proxy's mesh transport: userspace WireGuard between nodes, with a TCP/IP stack
//! inside the tunnel, all in one tokio task. No TUN device, no root, no kernel module.
//!
//! - WireGuard is boringtun's `noise::Tunn`, one per peer, over one UDP socket.
//! - Inside the tunnel, smoltcp runs TCP and UDP on an in-memory IP device. Every node has one
//!   mesh IP ([`addr`]); a packet goes to the peer that owns its destination mesh IP, and a
//!   packet from a peer is accepted only with that peer's mesh IP as its source.
//! - Peers are explicit: [`Mesh::add_peer`] / [`Mesh::remove_peer`]. A handshake from a static
//!   key that is not a peer is dropped before any state is made for it; a removed peer's
//!   sessions are dropped at once and its open streams fail.
//!
//! The static private key in [`MeshConfig`] is a transport key the proxy owns: it authenticates
//! this proxy to other proxies and encrypts traffic between them. It is not a TCB key and signs
//! nothing; what crosses the mesh that matters (ledger records, tokens) is authenticated end to
//! end by TCB keys. See `docs/mesh.md`.
//!
//! ```no_run
//! # async fn demo() -> Result<(), ppn_mesh::MeshError> {
//! use ppn_mesh::{Mesh, MeshConfig, keys};
//! let key = keys::generate_private_key()?;
//! let ip = ppn_mesh::addr::mesh_ip([1, 2, 3, 4, 5, 6, 7, 8]);
//! let mesh = Mesh::start(MeshConfig::new(key, "0.0.0.0:51820".parse().unwrap(), ip)).await?;
//! let other = keys::decode_public_key("hSDwCYkwp1R0i33ctD73Wg2/Og0mOBr066SpjqqbTmo=")?;
//! let other_ip = ppn_mesh::addr::mesh_ip([8, 7, 6, 5, 4, 3, 2, 1]);
//! mesh.add_peer(other, "192.0.2.7:51820".parse().unwrap(), other_ip).await?;
//! let stream = mesh.connect(other_ip, 7000).await?; // tokio AsyncRead + AsyncWrite
//! # drop(stream); Ok(()) }
//! ```

pub mod addr;
mod bench;
mod datagram;
mod engine;
pub mod keys;
mod stream;

pub use bench::{BenchResult, bench_tunnel};
pub use boringtun::x25519::{PublicKey, StaticSecret};
pub use datagram::MeshDatagram;
pub use keys::KeyError;
pub use stream::{MeshListener, MeshStream};

use engine::{Command, Counters, Engine, Shared};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::{Duration, SystemTime};
use tokio::sync::{Notify, mpsc, oneshot};

/// Default MTU of the tunnel (inner IP packets): WireGuard's usual 1420, which fits a 1500-byte
/// path with IPv6 outer headers.
pub const DEFAULT_MTU: usize = 1420;
/// Bounded queue of commands from handles to the mesh task.
const COMMAND_QUEUE: usize = 256;

/// How a mesh runs. [`MeshConfig::new`] fills in the defaults; every field is public.
pub struct MeshConfig {
    /// This node's WireGuard static private key (a transport key the proxy owns).
    pub private_key: StaticSecret,
    /// The UDP address to listen on (port 0 picks one; see [`Mesh::local_addr`]).
    pub listen: SocketAddr,
    /// This node's mesh IP ([`addr::mesh_ip`]). Peers must have mesh IPs of the same family.
    pub mesh_ip: IpAddr,
    /// MTU of inner IP packets, default [`DEFAULT_MTU`]. TCP's MSS and the largest datagram
    /// follow from it.
    pub mtu: usize,
    /// Receive and send buffer of each TCP socket in smoltcp, so the largest TCP window,
    /// default 64 KiB. One stream's throughput is at most this per round trip (64 KiB at 50 ms
    /// is ~10 Mbit/s); larger windows recover far more slowly from loss with smoltcp 0.12's
    /// go-back-N retransmission (see `docs/mesh.md`), so raise it only for clean long links.
    pub tcp_buffer: usize,
    /// Bytes each [`MeshStream`] buffers each way between the caller and the mesh task,
    /// default 128 KiB.
    pub stream_buffer: usize,
    /// How long [`Mesh::connect`] waits for the TCP handshake (which includes the WireGuard
    /// handshake for a peer without a session), default 10 s.
    pub connect_timeout: Duration,
    /// A TCP connection that hears nothing for this long fails, default 60 s.
    pub tcp_idle_timeout: Duration,
    /// TCP keepalive interval on idle connections, default 20 s.
    pub tcp_keepalive: Duration,
    /// Listening sockets per [`Mesh::listen`] port, and accepted connections queued for
    /// [`MeshListener::accept`], default 8.
    pub listen_backlog: usize,
    /// Most smoltcp sockets (streams, pending connections, listening sockets, datagram sockets)
    /// at once, default 1024.
    pub max_sockets: usize,
    /// Received datagrams queued per [`MeshDatagram`] for `recv_from`, default 256.
    pub datagram_queue: usize,
    /// SO_RCVBUF / SO_SNDBUF requested for the UDP socket (the kernel caps it at
    /// `net.core.rmem_max` / `wmem_max`), default 4 MiB.
    pub udp_socket_buffer: usize,
    /// WireGuard persistent keepalive in seconds (for peers behind NAT), default none.
    pub persistent_keepalive: Option<u16>,
    /// **Test and benchmark knob, not for production:** the fraction (0.0 to 1.0) of outgoing
    /// UDP datagrams (handshakes and data alike) dropped on purpose, to exercise retransmission.
    /// Default 0.0.
    pub loss: f64,
    /// Seed of the loss knob's generator, so a lossy run is repeatable. Default 0.
    pub loss_seed: u64,
}

impl MeshConfig {
    /// A configuration with every default.
    pub fn new(private_key: StaticSecret, listen: SocketAddr, mesh_ip: IpAddr) -> Self {
        Self {
            private_key,
            listen,
            mesh_ip,
            mtu: DEFAULT_MTU,
            tcp_buffer: 64 * 1024,
            stream_buffer: 128 * 1024,
            connect_timeout: Duration::from_secs(10),
            tcp_idle_timeout: Duration::from_secs(60),
            tcp_keepalive: Duration::from_secs(20),
            listen_backlog: 8,
            max_sockets: 1024,
            datagram_queue: 256,
            udp_socket_buffer: 4 * 1024 * 1024,
            persistent_keepalive: None,
            loss: 0.0,
            loss_seed: 0,
        }
    }

    fn check(&self) -> Result<(), MeshError> {
        let bad = |what: &str| Err(MeshError::InvalidConfig(what.to_owned()));
        // IPv6 needs 1280; below ~576 TCP's MSS stops making sense for IPv4.
        let min_mtu = if self.mesh_ip.is_ipv4() { 576 } else { 1280 };
        if self.mtu < min_mtu || self.mtu > 65_535 - 32 {
            return bad(&format!("mtu {} is outside {min_mtu}..=65503", self.mtu));
        }
        if !(self.loss.is_finite() && (0.0..=1.0).contains(&self.loss)) {
            return bad(&format!("loss {} is not a fraction in 0.0..=1.0", self.loss));
        }
        if self.tcp_buffer < 4 * self.mtu || self.tcp_buffer > 1 << 30 {
            return bad(&format!("tcp_buffer {} is outside 4 MTUs..=1 GiB", self.tcp_buffer));
        }
        if self.stream_buffer == 0 || self.listen_backlog == 0 || self.max_sockets == 0 || self.datagram_queue == 0 {
            return bad("stream_buffer, listen_backlog, max_sockets and datagram_queue must be positive");
        }
        if self.connect_timeout.is_zero() || self.tcp_idle_timeout.is_zero() || self.tcp_keepalive.is_zero() {
            return bad("timeouts must be positive");
        }
        if !usable_mesh_ip(self.mesh_ip) {
            return Err(MeshError::InvalidMeshIp(self.mesh_ip));
        }
        Ok(())
    }
}

impl std::fmt::Debug for MeshConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshConfig")
            .field("public_key", &keys::encode_public_key(&PublicKey::from(&self.private_key)))
            .field("listen", &self.listen)
            .field("mesh_ip", &self.mesh_ip)
            .field("mtu", &self.mtu)
            .field("tcp_buffer", &self.tcp_buffer)
            .field("stream_buffer", &self.stream_buffer)
            .field("connect_timeout", &self.connect_timeout)
            .field("tcp_idle_timeout", &self.tcp_idle_timeout)
            .field("tcp_keepalive", &self.tcp_keepalive)
            .field("listen_backlog", &self.listen_backlog)
            .field("max_sockets", &self.max_sockets)
            .field("datagram_queue", &self.datagram_queue)
            .field("udp_socket_buffer", &self.udp_socket_buffer)
            .field("persistent_keepalive", &self.persistent_keepalive)
            .field("loss", &self.loss)
            .field("loss_seed", &self.loss_seed)
            .finish_non_exhaustive()
    }
}

/// Mesh errors.
#[derive(Debug, thiserror::Error)]
pub enum MeshError {
    #[error("invalid mesh configuration: {0}")]
    InvalidConfig(String),
    #[error("cannot bind the mesh UDP socket to {addr}: {source}")]
    Bind { addr: SocketAddr, source: std::io::Error },
    #[error("mesh I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("the mesh has stopped")]
    Stopped,
    #[error("{0} is not a usable mesh IP")]
    InvalidMeshIp(IpAddr),
    #[error("mesh IP {0} is of the other address family than this node's")]
    AddressFamily(IpAddr),
    #[error("mesh IP {0} is already this node's or another peer's")]
    MeshIpInUse(IpAddr),
    #[error("that is this node's own public key")]
    OwnKey,
    #[error("the peer key is a low-order point (no shared secret possible)")]
    InvalidPeerKey,
    #[error("peer {0} is already in the mesh")]
    PeerExists(String),
    #[error("peer {0} is not in the mesh")]
    UnknownPeer(String),
    #[error("too many peers")]
    TooManyPeers,
    #[error("no peer has mesh IP {0}")]
    NoRoute(IpAddr),
    #[error("port 0 is not usable here")]
    InvalidPort,
    #[error("mesh port {0} is already in use")]
    PortInUse(u16),
    #[error("at most {0} mesh sockets at once")]
    TooManySockets(usize),
    #[error("cannot connect to {0}: {1}")]
    Connect(SocketAddr, String),
    #[error("cannot listen on mesh port {0}: {1}")]
    Listen(u16, String),
    #[error("no connection to {0} within {1:?}")]
    ConnectTimeout(SocketAddr, Duration),
    #[error("{0} refused the connection")]
    ConnectionRefused(SocketAddr),
    #[error("the peer was removed from the mesh")]
    PeerRemoved,
    #[error("datagram of {len} bytes is larger than the {max} that fit in one tunnel packet")]
    DatagramTooLarge { len: usize, max: usize },
    #[error("the datagram socket's send buffer is full")]
    Congested,
}

/// One peer as [`Mesh::peers`] reports it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerInfo {
    pub public_key: PublicKey,
    /// Where its datagrams go: as added, or where its last authenticated datagram came from.
    pub endpoint: SocketAddr,
    pub mesh_ip: IpAddr,
    /// When the current WireGuard session was established, if there is one.
    pub last_handshake: Option<SystemTime>,
    /// Inner IP bytes received from it through the tunnel.
    pub bytes_in: u64,
    /// Inner IP bytes sent to it through the tunnel.
    pub bytes_out: u64,
}

/// Counters of the whole mesh since it started.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct MeshStats {
    pub datagrams_in: u64,
    pub datagrams_out: u64,
    /// Handshake initiations from a static key that is not (or no longer) a peer, dropped.
    pub handshakes_refused: u64,
    /// Datagrams that failed a check: malformed, bad MAC, failed decryption, replayed, stale.
    pub packets_invalid: u64,
    /// Datagrams for a session index no peer has (for example a removed peer's).
    pub packets_unknown_session: u64,
    /// Inner packets whose source was not the sending peer's mesh IP, dropped.
    pub packets_spoofed: u64,
    /// Inner packets to a mesh IP no peer has, dropped.
    pub no_route: u64,
    /// Datagrams dropped by the `loss` knob.
    pub loss_dropped: u64,
    /// UDP send or receive errors.
    pub send_errors: u64,
    /// Cookie replies sent to handshakes under load.
    pub cookies_sent: u64,
    /// Connections reset because the listener's accept queue was full.
    pub accept_overflow: u64,
}

/// A running mesh: a handle to its task. Clones share the task; it stops when the last clone
/// is dropped (or at [`Mesh::shutdown`]), and then every stream fails and every call returns
/// [`MeshError::Stopped`].
#[derive(Clone)]
pub struct Mesh {
    inner: Arc<Inner>,
}

struct Inner {
    cmd: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    public_key: PublicKey,
    mesh_ip: IpAddr,
    local_addr: SocketAddr,
    connect_timeout: Duration,
    shutdown: std::sync::Mutex<Option<oneshot::Sender<()>>>,
}

impl std::fmt::Debug for Mesh {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Mesh")
            .field("public_key", &keys::encode_public_key(&self.inner.public_key))
            .field("mesh_ip", &self.inner.mesh_ip)
            .field("local_addr", &self.inner.local_addr)
            .finish_non_exhaustive()
    }
}

impl Mesh {
    /// Binds the UDP socket and starts the mesh task on the current tokio runtime.
    pub async fn start(cfg: MeshConfig) -> Result<Mesh, MeshError> {
        cfg.check()?;
        let udp = bind_udp(cfg.listen, cfg.udp_socket_buffer)?;
        let local_addr = udp.local_addr()?;
        let mut seed = [0u8; 8];
        getrandom::fill(&mut seed).map_err(|e| KeyError::Entropy(e.to_string()))?;
        let shared = Arc::new(Shared { notify: Notify::new(), counters: Counters::default() });
        let public_key = PublicKey::from(&cfg.private_key);
        let mesh_ip = cfg.mesh_ip;
        let connect_timeout = cfg.connect_timeout;
        let engine = Engine::new(cfg, udp, Arc::clone(&shared), u64::from_le_bytes(seed));
        let (cmd, commands) = mpsc::channel(COMMAND_QUEUE);
        let (stop, stopped) = oneshot::channel();
        tokio::spawn(engine.run(commands, stopped));
        Ok(Mesh {
            inner: Arc::new(Inner {
                cmd,
                shared,
                public_key,
                mesh_ip,
                local_addr,
                connect_timeout,
                shutdown: std::sync::Mutex::new(Some(stop)),
            }),
        })
    }

    /// This node's WireGuard public key.
    pub fn public_key(&self) -> PublicKey {
        self.inner.public_key
    }

    /// This node's mesh IP.
    pub fn mesh_ip(&self) -> IpAddr {
        self.inner.mesh_ip
    }

    /// The bound UDP address (with the port the OS chose, if `listen` had port 0).
    pub fn local_addr(&self) -> SocketAddr {
        self.inner.local_addr
    }

    /// The mesh's counters.
    pub fn stats(&self) -> MeshStats {
        self.inner.shared.counters.snapshot()
    }

    /// Stops the mesh task now, for every clone of this handle.
    pub fn shutdown(&self) {
        let stop = self.inner.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
        if let Some(stop) = stop {
            let _ = stop.send(());
        }
    }

    async fn request<T>(&self, make: impl FnOnce(oneshot::Sender<T>) -> Command) -> Result<T, MeshError> {
        let (reply, answer) = oneshot::channel();
        self.inner.cmd.send(make(reply)).await.map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)
    }

    /// Adds a peer: its WireGuard public key, the UDP endpoint to reach it at, and its mesh IP
    /// (the one source address its inner packets may carry, and the destination that routes to
    /// it). Its handshakes are accepted from now on. Errors if the key or the mesh IP is taken.
    pub async fn add_peer(
        &self,
        public_key: PublicKey,
        endpoint: SocketAddr,
        mesh_ip: IpAddr,
    ) -> Result<(), MeshError> {
        self.request(|reply| Command::AddPeer { key: public_key, endpoint, mesh_ip, reply }).await?
    }

    /// Removes a peer at once: its sessions are dropped, its open streams fail with
    /// `ConnectionAborted`, pending connections to it fail, and its handshakes are refused.
    pub async fn remove_peer(&self, public_key: &PublicKey) -> Result<(), MeshError> {
        self.request(|reply| Command::RemovePeer { key: *public_key, reply }).await?
    }

    /// Every peer, ordered by mesh IP.
    pub async fn peers(&self) -> Result<Vec<PeerInfo>, MeshError> {
        self.request(|reply| Command::Peers { reply }).await
    }

    /// Opens a TCP stream to `mesh_ip`:`port` through the tunnel. Fails at once with
    /// [`MeshError::NoRoute`] if no peer has that mesh IP, with
    /// [`MeshError::ConnectionRefused`] if nothing listens there, and with
    /// [`MeshError::ConnectTimeout`] after `connect_timeout` if the peer does not answer (for
    /// example because it does not accept our handshakes).
    pub async fn connect(&self, mesh_ip: IpAddr, port: u16) -> Result<MeshStream, MeshError> {
        let to = SocketAddr::new(mesh_ip, port);
        // The task enforces the timeout; this outer one only guards against a stuck task.
        let limit = self.inner.connect_timeout + Duration::from_secs(1);
        match tokio::time::timeout(limit, self.request(|reply| Command::Connect { to, reply })).await {
            Ok(answer) => answer?,
            Err(_) => Err(MeshError::ConnectTimeout(to, self.inner.connect_timeout)),
        }
    }

    /// Accepts TCP streams on `port` of this node's mesh IP.
    pub async fn listen(&self, port: u16) -> Result<MeshListener, MeshError> {
        self.request(|reply| Command::Listen { port, reply }).await?
    }

    /// Binds a datagram (UDP) socket to `port` of this node's mesh IP.
    pub async fn bind_udp(&self, port: u16) -> Result<MeshDatagram, MeshError> {
        let cmd = self.inner.cmd.clone();
        self.request(|reply| Command::BindUdp { port, cmd, reply }).await?
    }
}

impl Drop for Inner {
    fn drop(&mut self) {
        // Dropping the sender stops the task.
        self.shutdown.lock().unwrap_or_else(|p| p.into_inner()).take();
    }
}

/// Whether `ip` can be a node's mesh IP: a unicast address that smoltcp can answer from.
pub(crate) fn usable_mesh_ip(ip: IpAddr) -> bool {
    let broadcast = matches!(ip, IpAddr::V4(a) if a.is_broadcast());
    !(ip.is_unspecified() || ip.is_multicast() || ip.is_loopback() || broadcast)
}

fn bind_udp(listen: SocketAddr, buffer: usize) -> Result<tokio::net::UdpSocket, MeshError> {
    use socket2::{Domain, Protocol, Socket, Type};
    let bind_err = |source| MeshError::Bind { addr: listen, source };
    let socket = Socket::new(Domain::for_address(listen), Type::DGRAM, Some(Protocol::UDP)).map_err(bind_err)?;
    // Best effort: the kernel caps these, and a smaller buffer only costs throughput.
    let _ = socket.set_recv_buffer_size(buffer);
    let _ = socket.set_send_buffer_size(buffer);
    socket.set_nonblocking(true).map_err(bind_err)?;
    socket.bind(&listen.into()).map_err(bind_err)?;
    Ok(tokio::net::UdpSocket::from_std(socket.into())?)
}
