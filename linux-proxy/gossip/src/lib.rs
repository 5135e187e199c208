//! Ledger gossip between node proxies (untrusted, std): the datagram format ([`msg`]), the
//! read-only relay a proxy offers its peers ([`relay`]) and the engine ([`engine`]) that pushes
//! new records, pulls what it lacks and trades node adverts, with SWIM membership and failure
//! detection ([`membership`], foca) saying which peers are up. It moves bytes only: every record
//! is checked by a TCB, and a proxy can drop or delay gossip but not forge it.
//! `docs/gossip.md` has the design.

pub mod engine;
pub mod membership;
pub mod msg;
pub mod relay;

pub use engine::{Gossip, GossipConfig, PeerView, Transport};
