//! The fleet's trust as a file an auditor keeps and checks reports against offline
//! (`ppn ledger trust > fleet.trust`, `ppn verify --roots fleet.trust`). UTF-8 text, at most
//! [`TRUST_FILE_MAX`] bytes:
//!
//! ```text
//! ppn-trust v1
//! # comments and blank lines are skipped
//! <node id: 16 hex> <signing key: 64 hex> trusted
//! <node id: 16 hex> <signing key: 64 hex> revoked
//! ```
//!
//! Each node at most once, at most [`TRUST_NODES_MAX`] of them; the node id must be the key's
//! (`ppn_node_core::node_id_of`). A node not in the file is unknown. Every bad line is refused
//! with its number.

use crate::{Error, Standing, Trust};
use alloc::collections::BTreeMap;
use alloc::string::String;
use core::fmt::Write as _;
use ppn_wire::{ByteArray, NodeId};

pub const TRUST_FILE_MAX: usize = 1 << 20;
pub const TRUST_NODES_MAX: usize = 4096;
const HEADER: &str = "ppn-trust v1";

/// A parsed trust file.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct TrustFile {
    nodes: BTreeMap<NodeId, ([u8; 32], Standing)>,
}

fn hex<const N: usize>(s: &str) -> Option<[u8; N]> {
    if s.len() != 2 * N {
        return None;
    }
    let mut out = [0u8; N];
    for (i, o) in out.iter_mut().enumerate() {
        *o = u8::from_str_radix(s.get(2 * i..2 * i + 2)?, 16).ok()?;
    }
    Some(out)
}

impl TrustFile {
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds (or replaces) a node.
    pub fn insert(&mut self, key: [u8; 32], standing: Standing) -> Result<(), Error> {
        if self.nodes.len() >= TRUST_NODES_MAX {
            return Err(Error::TrustFile { line: 0, what: "more nodes than the limit" });
        }
        self.nodes.insert(ppn_node_core::node_id_of(&key), (key, standing));
        Ok(())
    }

    pub fn len(&self) -> usize {
        self.nodes.len()
    }

    pub fn is_empty(&self) -> bool {
        self.nodes.is_empty()
    }

    pub fn parse(bytes: &[u8]) -> Result<Self, Error> {
        let bad = |line: usize, what: &'static str| Error::TrustFile { line, what };
        if bytes.len() > TRUST_FILE_MAX {
            return Err(Error::TooLong { what: "trust file", len: bytes.len(), max: TRUST_FILE_MAX });
        }
        let text = core::str::from_utf8(bytes).map_err(|_| bad(0, "not UTF-8"))?;
        let mut lines = text.lines().enumerate().map(|(i, l)| (i + 1, l.trim()));
        match lines.next() {
            Some((_, HEADER)) => {}
            _ => return Err(bad(1, "the first line is not `ppn-trust v1`")),
        }
        let mut file = Self::new();
        for (n, line) in lines {
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let mut f = line.split_ascii_whitespace();
            let (Some(id), Some(key), Some(standing), None) = (f.next(), f.next(), f.next(), f.next()) else {
                return Err(bad(n, "not three fields"));
            };
            let id = NodeId(ByteArray(hex::<8>(id).ok_or(bad(n, "a node id is 16 hex digits"))?));
            let key = hex::<32>(key).ok_or(bad(n, "a signing key is 64 hex digits"))?;
            let standing = match standing {
                "trusted" => Standing::Trusted,
                "revoked" => Standing::Revoked,
                _ => return Err(bad(n, "the standing is `trusted` or `revoked`")),
            };
            if ppn_node_core::node_id_of(&key) != id {
                return Err(bad(n, "the node id is not the key's"));
            }
            if file.nodes.contains_key(&id) {
                return Err(bad(n, "a node listed twice"));
            }
            if file.nodes.len() >= TRUST_NODES_MAX {
                return Err(bad(n, "more nodes than the limit"));
            }
            file.nodes.insert(id, (key, standing));
        }
        Ok(file)
    }

    pub fn encode(&self) -> String {
        let mut out = String::from(HEADER);
        out.push('\n');
        for (id, (key, standing)) in &self.nodes {
            let _ = write!(out, "{id} ");
            for b in key {
                let _ = write!(out, "{b:02x}");
            }
            out.push_str(if *standing == Standing::Trusted { " trusted\n" } else { " revoked\n" });
        }
        out
    }
}

impl Trust for TrustFile {
    fn standing(&self, node: NodeId, key: &[u8; 32]) -> Standing {
        match self.nodes.get(&node) {
            Some((k, s)) if k == key => *s,
            _ => Standing::Unknown,
        }
    }
}
