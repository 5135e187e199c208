//! Meshes on 127.0.0.1 with real UDP sockets and real WireGuard handshakes.

use ppn_mesh::{Mesh, MeshConfig, MeshError, MeshStream, StaticSecret, addr, keys};
use sha2::{Digest, Sha256};
use std::net::{IpAddr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// How long a connection to a node that will not answer may take to fail in these tests.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(2);
/// The bound the tests assert on that failure (the timeout plus scheduling slack).
const FAIL_BOUND: Duration = Duration::from_secs(4);

fn localhost() -> SocketAddr {
    "127.0.0.1:0".parse().unwrap()
}

fn ip(n: u8) -> IpAddr {
    addr::mesh_ip([0x7e, 0x57, 0, 0, 0, 0, 0, n])
}

fn config(key: StaticSecret, n: u8) -> MeshConfig {
    let mut cfg = MeshConfig::new(key, localhost(), ip(n));
    cfg.connect_timeout = CONNECT_TIMEOUT;
    cfg
}

async fn node(n: u8) -> Mesh {
    Mesh::start(config(keys::generate_private_key().unwrap(), n)).await.unwrap()
}

async fn introduce(a: &Mesh, b: &Mesh) {
    a.add_peer(b.public_key(), b.local_addr(), b.mesh_ip()).await.unwrap();
    b.add_peer(a.public_key(), a.local_addr(), a.mesh_ip()).await.unwrap();
}

/// Serves `port` on `mesh`: echoes every stream back until it ends.
async fn echo_server(mesh: &Mesh, port: u16) {
    let mut listener = mesh.listen(port).await.unwrap();
    tokio::spawn(async move {
        while let Ok(stream) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = tokio::io::split(stream);
                let _ = tokio::io::copy(&mut r, &mut w).await;
                let _ = w.shutdown().await;
            });
        }
    });
}

async fn echo(stream: &mut MeshStream, message: &[u8]) -> Vec<u8> {
    stream.write_all(message).await.unwrap();
    let mut back = vec![0u8; message.len()];
    tokio::time::timeout(Duration::from_secs(5), stream.read_exact(&mut back)).await.unwrap().unwrap();
    back
}

fn pattern(len: usize, seed: u64) -> Vec<u8> {
    let mut x = seed | 1;
    (0..len)
        .map(|_| {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            x as u8
        })
        .collect()
}

/// Sends `data` from `from` to a fresh listener on `to` and returns the SHA-256 of what arrived.
async fn transfer(from: &Mesh, to: &Mesh, port: u16, data: Vec<u8>) -> [u8; 32] {
    let mut listener = to.listen(port).await.unwrap();
    let receiver = tokio::spawn(async move {
        let mut stream = listener.accept().await.unwrap();
        let mut got = Vec::new();
        stream.read_to_end(&mut got).await.unwrap();
        got
    });
    let mut stream = from.connect(to.mesh_ip(), port).await.unwrap();
    stream.write_all(&data).await.unwrap();
    stream.shutdown().await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(20), receiver).await.unwrap().unwrap();
    assert_eq!(got.len(), data.len());
    Sha256::digest(&got).into()
}

async fn assert_cut_off(from: &Mesh, to: IpAddr, port: u16) {
    let start = Instant::now();
    let result = from.connect(to, port).await;
    let took = start.elapsed();
    assert!(matches!(result, Err(MeshError::ConnectTimeout(..))), "{result:?}");
    assert!(took < FAIL_BOUND, "failing took {took:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn streams_echo_both_ways_and_4_mib_arrives_intact() {
    let a = node(1).await;
    let b = node(2).await;
    introduce(&a, &b).await;
    echo_server(&a, 7).await;
    echo_server(&b, 7).await;

    let mut ab = a.connect(b.mesh_ip(), 7).await.unwrap();
    assert_eq!(ab.peer_addr(), SocketAddr::new(b.mesh_ip(), 7));
    assert_eq!(ab.local_addr().ip(), a.mesh_ip());
    assert_eq!(echo(&mut ab, b"hello from a").await, b"hello from a");
    // A's first handshake can reach B before B has added A (the two add_peer calls race, and
    // add_peer starts a handshake at once); B refuses it and A retries. Count from here.
    let before = b.stats();
    let mut ba = b.connect(a.mesh_ip(), 7).await.unwrap();
    assert_eq!(echo(&mut ba, b"hello from b").await, b"hello from b");
    let big = pattern(200_000, 9);
    assert_eq!(echo(&mut ab, &big).await, big);

    // Orderly close: our FIN comes back as the echo server's FIN.
    ab.shutdown().await.unwrap();
    let mut rest = Vec::new();
    tokio::time::timeout(Duration::from_secs(5), ab.read_to_end(&mut rest)).await.unwrap().unwrap();
    assert!(rest.is_empty());

    let data = pattern(4 << 20, 1);
    let want: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(transfer(&a, &b, 9000, data).await, want);

    let peers = a.peers().await.unwrap();
    assert_eq!(peers.len(), 1);
    assert_eq!(peers[0].public_key, b.public_key());
    assert_eq!(peers[0].mesh_ip, b.mesh_ip());
    assert_eq!(peers[0].endpoint, b.local_addr());
    assert!(peers[0].last_handshake.is_some());
    assert!(peers[0].bytes_out > 4 << 20, "{peers:?}");
    assert!(peers[0].bytes_in > 0);
    let stats = b.stats();
    let refused = stats.handshakes_refused - before.handshakes_refused;
    assert_eq!(refused + stats.packets_spoofed + stats.no_route, 0, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn datagrams_both_ways() {
    let a = node(3).await;
    let b = node(4).await;
    introduce(&a, &b).await;
    let ua = a.bind_udp(4000).await.unwrap();
    let ub = b.bind_udp(4001).await.unwrap();
    assert!(matches!(b.bind_udp(4001).await, Err(MeshError::PortInUse(4001))));

    // If the handshake add_peer started is still under way, the datagram waits for it in the Tunn.
    ua.send_to(b.mesh_ip(), 4001, b"push from a").await.unwrap();
    let (from, data) = tokio::time::timeout(Duration::from_secs(5), ub.recv_from()).await.unwrap().unwrap();
    assert_eq!((from, data.as_slice()), (SocketAddr::new(a.mesh_ip(), 4000), &b"push from a"[..]));

    for i in 0..20u8 {
        ub.send_to(a.mesh_ip(), 4000, &[i; 100]).await.unwrap();
    }
    for i in 0..20u8 {
        let (from, data) = tokio::time::timeout(Duration::from_secs(5), ua.recv_from()).await.unwrap().unwrap();
        assert_eq!(from, SocketAddr::new(b.mesh_ip(), 4001));
        assert_eq!(data, vec![i; 100]);
    }

    let max = ua.max_payload();
    assert_eq!(max, 1420 - 40 - 8);
    ua.send_to(b.mesh_ip(), 4001, &vec![7u8; max]).await.unwrap();
    let (_, data) = tokio::time::timeout(Duration::from_secs(5), ub.recv_from()).await.unwrap().unwrap();
    assert_eq!(data.len(), max);
    assert!(matches!(
        ua.send_to(b.mesh_ip(), 4001, &vec![0u8; max + 1]).await,
        Err(MeshError::DatagramTooLarge { .. })
    ));
    assert!(matches!(ua.send_to(ip(99), 4001, b"x").await, Err(MeshError::NoRoute(_))));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_removed_peer_is_cut_off_at_once_and_its_handshakes_are_refused() {
    let key_a = keys::generate_private_key().unwrap();
    let a = Mesh::start(config(key_a.clone(), 5)).await.unwrap();
    let b = node(6).await;
    introduce(&a, &b).await;
    echo_server(&b, 7).await;
    let mut stream = a.connect(b.mesh_ip(), 7).await.unwrap();
    assert_eq!(echo(&mut stream, b"before").await, b"before");

    // B's side of the open stream fails at once.
    let mut listener = a.listen(8).await.unwrap();
    let mut ba = b.connect(a.mesh_ip(), 8).await.unwrap();
    let _ab = listener.accept().await.unwrap();
    b.remove_peer(&a.public_key()).await.unwrap();
    let mut buf = [0u8; 16];
    let err = tokio::time::timeout(Duration::from_secs(1), ba.read(&mut buf)).await.unwrap().unwrap_err();
    assert_eq!(err.kind(), std::io::ErrorKind::ConnectionAborted);
    assert!(ba.write_all(b"x").await.is_err());
    assert!(b.peers().await.unwrap().is_empty());
    assert!(matches!(b.connect(a.mesh_ip(), 8).await, Err(MeshError::NoRoute(_))));
    assert!(matches!(b.remove_peer(&a.public_key()).await, Err(MeshError::UnknownPeer(_))));

    // A still has B, and its old session: B drops those packets, so nothing gets through.
    assert_cut_off(&a, b.mesh_ip(), 7).await;
    assert!(b.stats().packets_unknown_session > 0, "{:?}", b.stats());
    stream.write_all(b"after").await.unwrap();
    let read = tokio::time::timeout(Duration::from_millis(500), stream.read(&mut buf)).await;
    assert!(read.is_err(), "B answered a removed peer: {read:?}");

    // Re-added, A is back at once: B's handshake moves A off the session B forgot.
    drop(stream);
    b.add_peer(a.public_key(), a.local_addr(), a.mesh_ip()).await.unwrap();
    let start = Instant::now();
    let mut again = a.connect(b.mesh_ip(), 7).await.unwrap();
    assert_eq!(echo(&mut again, b"back").await, b"back");
    // Without B's handshake at add_peer, A would keep using the dead session for 15 s.
    assert!(start.elapsed() < Duration::from_secs(3), "took {:?}", start.elapsed());
    b.remove_peer(&a.public_key()).await.unwrap();
    drop(again);

    // A restarts (same key, no session): its handshake initiations are refused.
    a.shutdown();
    // Counted before A2 exists: its first initiation goes out with add_peer, and may be refused
    // before this task reads the counter again.
    let refused = b.stats().handshakes_refused;
    let a2 = Mesh::start(config(key_a, 5)).await.unwrap();
    a2.add_peer(b.public_key(), b.local_addr(), b.mesh_ip()).await.unwrap();
    assert_cut_off(&a2, b.mesh_ip(), 7).await;
    assert!(b.stats().handshakes_refused > refused, "{:?}", b.stats());
    assert!(a2.peers().await.unwrap()[0].last_handshake.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stranger_cannot_reach_a_node() {
    let b = node(7).await;
    echo_server(&b, 7).await;
    let c = node(8).await;
    // C knows B; B does not know C.
    c.add_peer(b.public_key(), b.local_addr(), b.mesh_ip()).await.unwrap();
    assert_cut_off(&c, b.mesh_ip(), 7).await;
    let stats = b.stats();
    assert!(stats.handshakes_refused >= 1, "{stats:?}");
    assert!(b.peers().await.unwrap().is_empty());
    assert!(c.peers().await.unwrap()[0].last_handshake.is_none());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_peer_cannot_speak_as_another_mesh_ip() {
    let a = node(9).await;
    let b = node(10).await;
    // B believes A is ip(11); A uses ip(9). A's handshake succeeds, but its packets carry
    // source ip(9), which B does not accept from A.
    a.add_peer(b.public_key(), b.local_addr(), b.mesh_ip()).await.unwrap();
    b.add_peer(a.public_key(), a.local_addr(), ip(11)).await.unwrap();
    echo_server(&b, 7).await;
    assert_cut_off(&a, b.mesh_ip(), 7).await;
    assert!(b.stats().packets_spoofed > 0, "{:?}", b.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_5_percent_loss_1_mib_still_arrives_intact() {
    let lossy = |n: u8, seed: u64| {
        let mut cfg = config(keys::generate_private_key().unwrap(), n);
        cfg.loss = 0.05;
        cfg.loss_seed = seed;
        cfg.connect_timeout = Duration::from_secs(15);
        cfg
    };
    let a = Mesh::start(lossy(12, 1)).await.unwrap();
    let b = Mesh::start(lossy(13, 2)).await.unwrap();
    introduce(&a, &b).await;
    let data = pattern(1 << 20, 5);
    let want: [u8; 32] = Sha256::digest(&data).into();
    assert_eq!(transfer(&a, &b, 9000, data).await, want);
    assert!(a.stats().loss_dropped > 0, "{:?}", a.stats());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hostile_datagrams_are_counted_not_fatal() {
    let a = node(14).await;
    let b = node(15).await;
    introduce(&a, &b).await;
    echo_server(&b, 7).await;
    let attacker = tokio::net::UdpSocket::bind(localhost()).await.unwrap();
    let mut junk: Vec<Vec<u8>> = vec![vec![], vec![1], vec![4, 0, 0, 0], vec![0xff; 2000], pattern(148, 3)];
    for kind in 1u8..=4 {
        for len in [4usize, 31, 32, 64, 92, 148, 1500] {
            let mut d = pattern(len, u64::from(kind) * 1000 + len as u64);
            d[..4].copy_from_slice(&[kind, 0, 0, 0]);
            junk.push(d);
        }
    }
    for d in &junk {
        attacker.send_to(d, b.local_addr()).await.unwrap();
    }
    let mut stream = a.connect(b.mesh_ip(), 7).await.unwrap();
    assert_eq!(echo(&mut stream, b"still fine").await, b"still fine");
    // Replays of what A sent are dropped too.
    let stats = b.stats();
    assert!(stats.packets_invalid + stats.packets_unknown_session >= junk.len() as u64 - 5, "{stats:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn queues_are_bounded() {
    // Accept queue: one slot. Connections beyond it are reset, not queued.
    let mut cfg = config(keys::generate_private_key().unwrap(), 18);
    cfg.listen_backlog = 1;
    cfg.datagram_queue = 4;
    let b = Mesh::start(cfg).await.unwrap();
    let a = node(19).await;
    introduce(&a, &b).await;
    let mut listener = b.listen(7).await.unwrap();
    let mut streams = Vec::new();
    for _ in 0..4 {
        // A connection may be reset before or after its handshake completes here.
        if let Ok(s) = a.connect(b.mesh_ip(), 7).await {
            streams.push(s);
        }
    }
    let start = Instant::now();
    while b.stats().accept_overflow == 0 && start.elapsed() < Duration::from_secs(3) {
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    assert!(b.stats().accept_overflow >= 1, "{:?}", b.stats());
    let first = tokio::time::timeout(Duration::from_secs(1), listener.accept()).await.unwrap().unwrap();
    assert_eq!(first.peer_addr().ip(), a.mesh_ip());
    let mut reset = 0;
    for s in &mut streams {
        let mut buf = [0u8; 1];
        if let Ok(Err(e)) = tokio::time::timeout(Duration::from_secs(1), s.read(&mut buf)).await {
            assert_eq!(e.kind(), std::io::ErrorKind::ConnectionReset);
            reset += 1;
        }
    }
    assert!(reset >= 1, "no connection was reset");

    // Datagram queue: 4 waiting for recv_from, 64 in smoltcp's socket; the rest are dropped.
    let ua = a.bind_udp(5000).await.unwrap();
    let ub = b.bind_udp(5000).await.unwrap();
    let mut sent = 0;
    for i in 0..200u32 {
        match ua.send_to(b.mesh_ip(), 5000, &i.to_be_bytes()).await {
            Ok(()) => sent += 1,
            Err(MeshError::Congested) => tokio::task::yield_now().await,
            Err(e) => panic!("{e}"),
        }
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let mut got = 0;
    while let Ok(Ok(_)) = tokio::time::timeout(Duration::from_millis(100), ub.recv_from()).await {
        got += 1;
    }
    assert!(got > 0 && got <= 4 + 64, "received {got} of {sent}");
}

#[tokio::test]
async fn configuration_and_peer_errors() {
    let key = keys::generate_private_key().unwrap();
    let mut cfg = config(key.clone(), 16);
    cfg.loss = 1.5;
    assert!(matches!(Mesh::start(cfg).await, Err(MeshError::InvalidConfig(_))));
    let mut cfg = config(key.clone(), 16);
    cfg.mtu = 100;
    assert!(matches!(Mesh::start(cfg).await, Err(MeshError::InvalidConfig(_))));
    let taken = node(17).await;
    let mut cfg = config(key.clone(), 16);
    cfg.listen = taken.local_addr();
    assert!(matches!(Mesh::start(cfg).await, Err(MeshError::Bind { .. })));

    let a = Mesh::start(config(key, 16)).await.unwrap();
    let other = keys::public_key(&keys::generate_private_key().unwrap());
    let endpoint = taken.local_addr();
    assert!(matches!(a.add_peer(a.public_key(), endpoint, ip(20)).await, Err(MeshError::OwnKey)));
    assert!(matches!(a.add_peer(other, endpoint, a.mesh_ip()).await, Err(MeshError::MeshIpInUse(_))));
    let v4 = addr::mesh_ip_v4([0; 8]);
    assert!(matches!(a.add_peer(other, endpoint, v4).await, Err(MeshError::AddressFamily(_))));
    let zero = ppn_mesh::PublicKey::from([0u8; 32]);
    assert!(matches!(a.add_peer(zero, endpoint, ip(21)).await, Err(MeshError::InvalidPeerKey)));
    a.add_peer(other, endpoint, ip(20)).await.unwrap();
    assert!(matches!(a.add_peer(other, endpoint, ip(22)).await, Err(MeshError::PeerExists(_))));
    let third = keys::public_key(&keys::generate_private_key().unwrap());
    assert!(matches!(a.add_peer(third, endpoint, ip(20)).await, Err(MeshError::MeshIpInUse(_))));
    assert!(matches!(a.listen(0).await, Err(MeshError::InvalidPort)));
    let _l = a.listen(80).await.unwrap();
    assert!(matches!(a.listen(80).await, Err(MeshError::PortInUse(80))));
    assert!(matches!(a.connect(ip(30), 80).await, Err(MeshError::NoRoute(_))));

    a.shutdown();
    tokio::time::sleep(Duration::from_millis(50)).await;
    assert!(matches!(a.peers().await, Err(MeshError::Stopped)));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn ipv4_mesh_addresses_work_too() {
    let start = |n: u8| async move {
        let cfg = MeshConfig::new(
            keys::generate_private_key().unwrap(),
            localhost(),
            addr::mesh_ip_v4([0, 0, 0, 0, 0, 0, 1, n]),
        );
        Mesh::start(cfg).await.unwrap()
    };
    let a = start(1).await;
    let b = start(2).await;
    introduce(&a, &b).await;
    echo_server(&b, 7).await;
    let mut s = a.connect(b.mesh_ip(), 7).await.unwrap();
    assert_eq!(echo(&mut s, b"v4").await, b"v4");
}

#[test]
fn bench_tunnel_reports_finite_positive_rates() {
    let r = ppn_mesh::bench_tunnel(1 << 20).unwrap();
    assert_eq!(r.bytes, 1 << 20);
    for v in [r.tunnel_mbps, r.loopback_mbps, r.tunnel_secs, r.loopback_secs, r.ratio()] {
        assert!(v.is_finite() && v > 0.0, "{r:?}");
    }
}

/// The numbers in docs/mesh.md: `cargo test --release -p ppn-mesh -- --ignored --nocapture`.
#[test]
#[ignore = "benchmark: 64 MiB each way, run with --release"]
fn bench_tunnel_64_mib() {
    for _ in 0..3 {
        let r = ppn_mesh::bench_tunnel(64 << 20).unwrap();
        println!(
            "bench_tunnel 64 MiB: tunnel {:.0} Mbit/s ({:.2} s), loopback TCP {:.0} Mbit/s ({:.2} s), ratio {:.3}",
            r.tunnel_mbps,
            r.tunnel_secs,
            r.loopback_mbps,
            r.loopback_secs,
            r.ratio()
        );
    }
}
