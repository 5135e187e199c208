//! Membership and failure detection: SWIM (with suspicion and infection-style dissemination)
//! through `foca`, on the same tunnel datagrams as the rest of gossip (type 3, the body is foca's
//! own postcard packet).
//!
//! The member set is not SWIM's to decide: only the ledger's trusted nodes with a mesh key are
//! peers ([`crate::Gossip::set_peers`]). SWIM says which of them are *up*: a peer that stops
//! answering probes, directly and through others, is suspected and then declared down, and the
//! scheduler never places on a node that is down. A member foca learns of that is not a peer
//! is ignored, and nothing is sent to it. A hostile peer can make others look down (SWIM trusts
//! its members' reports), which costs placement choices, never trust.
//!
//! Each identity carries an incarnation (the start time in ms), so a restarted node rejoins at
//! once with an identity that wins over its old one.

use foca::{Config, Foca, Identity, Notification, PostcardCodec, Runtime, Timer};
use ppn_wire::service::NodeId;
use rand::SeedableRng;
use rand::rngs::SmallRng;
use serde::{Deserialize, Serialize};
use std::collections::BTreeSet;
use std::num::{NonZeroU32, NonZeroUsize};
use std::time::Duration;

/// A node as SWIM knows it: its id and the incarnation it started with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
pub struct SwimId {
    pub node: [u8; 8],
    pub incarnation: u64,
}

impl SwimId {
    pub fn node_id(&self) -> NodeId {
        NodeId(ppn_wire::ByteArray(self.node))
    }
}

impl Identity for SwimId {
    type Addr = [u8; 8];

    fn renew(&self) -> Option<Self> {
        Some(Self { node: self.node, incarnation: self.incarnation.wrapping_add(1) })
    }

    fn addr(&self) -> [u8; 8] {
        self.node
    }

    fn win_addr_conflict(&self, adversary: &Self) -> bool {
        self.incarnation > adversary.incarnation
    }
}

/// What one foca call asked for.
#[derive(Debug, Default)]
pub struct Effects {
    /// Packets to send (foca's bytes, to be framed as type-3 datagrams).
    pub send: Vec<(SwimId, Vec<u8>)>,
    /// Timers to deliver back after a delay.
    pub timers: Vec<(Timer<SwimId>, Duration)>,
    /// Nodes that came up or went down.
    pub up: Vec<NodeId>,
    pub down: Vec<NodeId>,
}

impl Runtime<SwimId> for &mut Effects {
    fn notify(&mut self, notification: Notification<'_, SwimId>) {
        match notification {
            Notification::MemberUp(id) => self.up.push(id.node_id()),
            Notification::MemberDown(id) => self.down.push(id.node_id()),
            _ => {}
        }
    }

    fn send_to(&mut self, to: SwimId, data: &[u8]) {
        self.send.push((to, data.to_vec()));
    }

    fn submit_after(&mut self, event: Timer<SwimId>, after: Duration) {
        self.timers.push((event, after));
    }
}

/// This node's SWIM state.
pub struct Swim {
    foca: Foca<SwimId, PostcardCodec, SmallRng, foca::NoCustomBroadcast>,
}

impl std::fmt::Debug for Swim {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Swim").field("me", self.foca.identity()).finish_non_exhaustive()
    }
}

/// SWIM timing for a fleet on one site: memberlist's LAN profile with faster probes, so that a
/// dead node is declared down in a few seconds.
pub fn config(fleet_size: usize, max_packet: usize) -> Config {
    let size = NonZeroU32::new(fleet_size.clamp(1, u32::MAX as usize) as u32).unwrap_or(NonZeroU32::MIN);
    let mut c = Config::new_lan(size);
    c.probe_period = Duration::from_millis(500);
    c.probe_rtt = Duration::from_millis(200);
    c.suspect_to_down_after = Duration::from_secs(3);
    c.max_packet_size = NonZeroUsize::new(max_packet).unwrap_or(NonZeroUsize::MIN);
    c
}

impl Swim {
    pub fn new(me: SwimId, config: Config, seed: u64) -> Self {
        Self { foca: Foca::new(me, config, SmallRng::seed_from_u64(seed), PostcardCodec) }
    }

    /// Introduces this node to `peer` (whose incarnation is not known yet).
    pub fn announce(&mut self, peer: NodeId, fx: &mut Effects) {
        let _ = self.foca.announce(SwimId { node: peer.0.0, incarnation: 0 }, fx);
    }

    /// A SWIM packet that came through `from`'s tunnel.
    pub fn handle(&mut self, packet: &[u8], fx: &mut Effects) {
        let _ = self.foca.handle_data(packet, fx);
    }

    pub fn timer(&mut self, t: Timer<SwimId>, fx: &mut Effects) {
        let _ = self.foca.handle_timer(t, fx);
    }

    /// The nodes SWIM considers up (alive or suspect), restricted to `peers`.
    pub fn up(&self, peers: &BTreeSet<NodeId>) -> BTreeSet<NodeId> {
        self.foca.iter_members().map(|m| m.id().node_id()).filter(|id| peers.contains(id)).collect()
    }
}
