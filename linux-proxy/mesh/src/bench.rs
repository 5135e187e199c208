//! `bench_tunnel`: bulk TCP throughput through the tunnel between two meshes on loopback,
//! against a plain kernel TCP connection on loopback in the same run (what `ppn bench tunnel`
//! wraps).

use crate::{Mesh, MeshConfig, MeshError, addr, keys};
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::time::{Duration, Instant};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Throughput of one [`bench_tunnel`] run. Rates are in megabits per second (10^6 bit/s) of
/// payload.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct BenchResult {
    /// Payload bytes sent each way.
    pub bytes: usize,
    /// TCP through WireGuard + smoltcp between two meshes on 127.0.0.1.
    pub tunnel_mbps: f64,
    /// Kernel TCP over 127.0.0.1 (tokio `TcpStream`), the same transfer.
    pub loopback_mbps: f64,
    pub tunnel_secs: f64,
    pub loopback_secs: f64,
}

impl BenchResult {
    /// `tunnel_mbps / loopback_mbps`.
    pub fn ratio(&self) -> f64 {
        self.tunnel_mbps / self.loopback_mbps
    }
}

const PORT: u16 = 5001;
const CHUNK: usize = 64 * 1024;

/// Sends `bytes` over a TCP stream through the tunnel between two fresh meshes on loopback, then
/// over a kernel TCP connection on loopback, and reports both rates. The WireGuard handshake and
/// the connection set-up are outside the timed part; the clock stops when the receiver has every
/// byte. Builds its own two-thread tokio runtime, so call it from synchronous code (not from
/// inside a runtime).
pub fn bench_tunnel(bytes: usize) -> Result<BenchResult, MeshError> {
    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build()?;
    runtime.block_on(async {
        let tunnel = tunnel_run(bytes).await?;
        let loopback = loopback_run(bytes).await?;
        let mbps = |d: Duration| bytes as f64 * 8.0 / 1e6 / d.as_secs_f64().max(1e-9);
        Ok(BenchResult {
            bytes,
            tunnel_mbps: mbps(tunnel),
            loopback_mbps: mbps(loopback),
            tunnel_secs: tunnel.as_secs_f64(),
            loopback_secs: loopback.as_secs_f64(),
        })
    })
}

async fn tunnel_run(bytes: usize) -> Result<Duration, MeshError> {
    let localhost = SocketAddr::new(IpAddr::V4(Ipv4Addr::LOCALHOST), 0);
    let ip_a = addr::mesh_ip([0xbe, 0x4c, 0, 0, 0, 0, 0, 1]);
    let ip_b = addr::mesh_ip([0xbe, 0x4c, 0, 0, 0, 0, 0, 2]);
    let a = Mesh::start(MeshConfig::new(keys::generate_private_key()?, localhost, ip_a)).await?;
    let b = Mesh::start(MeshConfig::new(keys::generate_private_key()?, localhost, ip_b)).await?;
    a.add_peer(b.public_key(), b.local_addr(), ip_b).await?;
    b.add_peer(a.public_key(), a.local_addr(), ip_a).await?;
    let mut listener = b.listen(PORT).await?;
    let client = a.connect(ip_b, PORT).await?;
    let server = listener.accept().await?;
    let elapsed = transfer(client, server, bytes).await?;
    a.shutdown();
    b.shutdown();
    Ok(elapsed)
}

async fn loopback_run(bytes: usize) -> Result<Duration, MeshError> {
    let listener = tokio::net::TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).await?;
    let client = tokio::net::TcpStream::connect(listener.local_addr()?).await?;
    let (server, _) = listener.accept().await?;
    client.set_nodelay(true)?;
    transfer(client, server, bytes).await
}

/// Writes `bytes` on `client`, reads them on `server`; the time until the last byte is read.
async fn transfer<C, S>(mut client: C, mut server: S, bytes: usize) -> Result<Duration, MeshError>
where
    C: AsyncWrite + Unpin + Send + 'static,
    S: AsyncRead + Unpin + Send + 'static,
{
    let start = Instant::now();
    let reader = tokio::spawn(async move {
        let mut buf = vec![0u8; CHUNK];
        let mut got = 0usize;
        while got < bytes {
            let n = server.read(&mut buf).await?;
            if n == 0 {
                return Err(std::io::Error::new(std::io::ErrorKind::UnexpectedEof, "stream ended early"));
            }
            got += n;
        }
        Ok::<_, std::io::Error>(start.elapsed())
    });
    let chunk: Vec<u8> = (0..CHUNK).map(|i| (i % 251) as u8).collect();
    let mut left = bytes;
    while left > 0 {
        let n = left.min(CHUNK);
        client.write_all(&chunk[..n]).await?;
        left -= n;
    }
    client.shutdown().await?;
    let elapsed = reader.await.map_err(|e| std::io::Error::other(e.to_string()))??;
    Ok(elapsed)
}
