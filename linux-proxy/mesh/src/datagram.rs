//! UDP datagrams inside the tunnel: [`MeshDatagram`], for gossip pushes and other small messages.

use crate::MeshError;
use crate::engine::{Command, Shared};
use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use tokio::sync::{Mutex, mpsc, oneshot};

/// A UDP socket bound to one port of this node's mesh address.
///
/// Datagrams are best effort, like UDP: no retransmission, no ordering. The source address of a
/// received datagram is authenticated: the tunnel accepts an inner packet only from the peer
/// whose mesh IP it carries as its source. At most [`MeshDatagram::max_payload`] bytes fit in one
/// datagram (the tunnel MTU less the IP and UDP headers; there is no IP fragmentation). At most
/// `datagram_queue` received datagrams wait for [`MeshDatagram::recv_from`]; beyond that they
/// wait in the socket's buffer, and past that new ones are dropped. Dropping it frees the port.
pub struct MeshDatagram {
    port: u16,
    max_payload: usize,
    handle: smoltcp::iface::SocketHandle,
    cmd: mpsc::Sender<Command>,
    shared: Arc<Shared>,
    rx: Mutex<mpsc::Receiver<(SocketAddr, Vec<u8>)>>,
}

impl std::fmt::Debug for MeshDatagram {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("MeshDatagram").field("port", &self.port).finish_non_exhaustive()
    }
}

impl MeshDatagram {
    pub(crate) fn new(
        port: u16,
        max_payload: usize,
        handle: smoltcp::iface::SocketHandle,
        cmd: mpsc::Sender<Command>,
        shared: Arc<Shared>,
        rx: mpsc::Receiver<(SocketAddr, Vec<u8>)>,
    ) -> Self {
        Self { port, max_payload, handle, cmd, shared, rx: Mutex::new(rx) }
    }

    /// The bound port.
    pub fn port(&self) -> u16 {
        self.port
    }

    /// The largest payload one datagram can carry.
    pub fn max_payload(&self) -> usize {
        self.max_payload
    }

    /// Queues one datagram to `mesh_ip`:`port`. Fails at once if no peer has that mesh IP, if
    /// the payload is too large, or if the socket's send buffer is full ([`MeshError::Congested`]).
    pub async fn send_to(&self, mesh_ip: IpAddr, port: u16, data: &[u8]) -> Result<(), MeshError> {
        if data.len() > self.max_payload {
            return Err(MeshError::DatagramTooLarge { len: data.len(), max: self.max_payload });
        }
        let (reply, answer) = oneshot::channel();
        let command =
            Command::UdpSend { handle: self.handle, to: SocketAddr::new(mesh_ip, port), data: data.to_vec(), reply };
        self.cmd.send(command).await.map_err(|_| MeshError::Stopped)?;
        answer.await.map_err(|_| MeshError::Stopped)?
    }

    /// The next datagram and the mesh address and port it came from. Fails only when the mesh has
    /// stopped.
    pub async fn recv_from(&self) -> Result<(SocketAddr, Vec<u8>), MeshError> {
        let got = self.rx.lock().await.recv().await.ok_or(MeshError::Stopped)?;
        // Datagrams may be waiting in the socket for room in the queue.
        self.shared.notify.notify_one();
        Ok(got)
    }
}
