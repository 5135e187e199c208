//! Gossip's transport over the mesh: datagrams to a node's gossip port inside the tunnel, and
//! streams to its relay port. A node's mesh IP is derived from its node id (`ppn_mesh::addr`), so
//! an inner source address names the sending node, and the mesh accepts a packet from a peer only
//! with that peer's mesh IP as its source.

use ppn_gossip::Transport;
use ppn_mesh::{Mesh, MeshStream};
use ppn_wire::NodeId;
use std::net::IpAddr;
use std::sync::Arc;
use tokio::sync::mpsc;

/// The mesh port gossip datagrams go to.
pub const GOSSIP_PORT: u16 = 7001;
/// The mesh port of the read-only ledger relay.
pub const RELAY_PORT: u16 = 7002;
/// The mesh port of the migration service (`crate::migration`); 7003 is the lease service.
pub const MIGRATE_PORT: u16 = 7004;

/// The node a mesh IP belongs to (IPv6 mesh addresses end in the node id).
pub fn node_of(ip: IpAddr) -> Option<NodeId> {
    match ip {
        IpAddr::V6(v6) if ppn_mesh::addr::in_mesh_prefix(ip) => {
            let mut id = [0u8; 8];
            id.copy_from_slice(&v6.octets()[8..]);
            Some(NodeId(ppn_wire::ByteArray(id)))
        }
        _ => None,
    }
}

/// The mesh IP of a node.
pub fn ip_of(node: NodeId) -> IpAddr {
    ppn_mesh::addr::mesh_ip(node.0.0)
}

/// Gossip's view of the mesh.
#[derive(Debug, Clone)]
pub struct MeshTransport {
    mesh: Mesh,
    out: mpsc::Sender<(NodeId, Vec<u8>)>,
}

impl MeshTransport {
    /// Binds the gossip port and starts the sender task (datagrams are queued, never awaited by
    /// gossip) and the receiver task, which hands every datagram with its sender to `inbox`.
    pub async fn start(mesh: Mesh, inbox: mpsc::Sender<(NodeId, Vec<u8>)>) -> Result<Self, ppn_mesh::MeshError> {
        let udp = Arc::new(mesh.bind_udp(GOSSIP_PORT).await?);
        let (out, mut out_rx) = mpsc::channel::<(NodeId, Vec<u8>)>(4096);
        let sender = Arc::clone(&udp);
        tokio::spawn(async move {
            while let Some((to, d)) = out_rx.recv().await {
                // Best effort: a full buffer or an unknown peer loses the datagram, as the
                // network could.
                let _ = sender.send_to(ip_of(to), GOSSIP_PORT, &d).await;
            }
        });
        let receiver = udp;
        tokio::spawn(async move {
            while let Ok((from, d)) = receiver.recv_from().await {
                if let Some(node) = node_of(from.ip())
                    && inbox.send((node, d)).await.is_err()
                {
                    break;
                }
            }
        });
        Ok(Self { mesh, out })
    }
}

impl Transport for MeshTransport {
    type Stream = MeshStream;

    fn send(&self, to: NodeId, datagram: Vec<u8>) {
        let _ = self.out.try_send((to, datagram));
    }

    async fn open(&self, to: NodeId) -> std::io::Result<MeshStream> {
        self.mesh.connect(ip_of(to), RELAY_PORT).await.map_err(std::io::Error::other)
    }
}
