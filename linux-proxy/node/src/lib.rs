//! `ppn-node`: the node daemon of the untrusted proxy. It ties together
//! - the link to this node's TCB (a `ppn-tcb` socket or an seL4 image's link),
//! - the mesh: userspace WireGuard to every trusted node of the ledger (`ppn-mesh`),
//! - gossip: ledger records pushed and pulled, SWIM membership, node adverts (`ppn-gossip`),
//! - a control socket for the operator's tools (`ppn fleet status`, endpoint hints).
//!
//! It holds no TCB secret. Its one key is the mesh's WireGuard static key (`DIR/mesh.key`), a
//! transport key; peers key-confirmed its public half when they paired with this node, and the
//! ledger's admission records carry it. The mesh's peers are exactly the ledger's trusted members
//! with a mesh key: a revocation that reaches this node's TCB removes the revoked node's peer, and
//! its handshakes are refused from then on. `docs/node.md` has the design.

pub mod balloon;
pub mod control;
pub mod fleet;
pub mod hints;
pub mod lease_wire;
pub mod migrate_stream;
pub mod migrate_wire;
pub mod migration;
pub mod node;
pub mod proxy_frame;
pub mod transport;
pub mod vms;

pub use node::{Node, NodeConfig, NodeError};
