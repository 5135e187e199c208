//! Endpoint hints: where to reach a node's mesh UDP socket, by node id. They come from the
//! operator (`ppn fleet up`, `ppn-node --peer`, the control socket's `hint`), are not trusted
//! (WireGuard authenticates whoever answers), and are kept in `DIR/endpoints`, one
//! `NODEID ADDRESS` per line, rewritten whole (temporary file, fsync, rename, fsync of the
//! directory) so a crash leaves the old file or the new one.

use ppn_wire::NodeId;
use std::collections::BTreeMap;
use std::io::Write;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};

/// Why a hints file could not be read or written.
#[derive(Debug, thiserror::Error)]
pub enum HintsError {
    #[error("{path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("{path}:{line}: {what}")]
    Parse { path: String, line: usize, what: String },
}

/// Parses a node id written as 16 hex digits (`NodeId`'s `FromStr`).
pub fn parse_node_id(s: &str) -> Option<NodeId> {
    s.parse().ok()
}

/// The hints of one node, backed by a file.
#[derive(Debug)]
pub struct Hints {
    path: PathBuf,
    map: BTreeMap<NodeId, SocketAddr>,
}

impl Hints {
    /// Reads `path` (a missing file is no hints).
    pub fn load(path: &Path) -> Result<Self, HintsError> {
        let io = |source| HintsError::Io { path: path.display().to_string(), source };
        let text = match std::fs::read_to_string(path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => String::new(),
            Err(e) => return Err(io(e)),
        };
        let mut map = BTreeMap::new();
        for (i, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let parse =
                |what: &str| HintsError::Parse { path: path.display().to_string(), line: i + 1, what: what.into() };
            let mut parts = line.split_whitespace();
            let id = parts.next().and_then(parse_node_id).ok_or_else(|| parse("want a 16-hex-digit node id"))?;
            let addr = parts.next().and_then(|a| a.parse().ok()).ok_or_else(|| parse("want an address host:port"))?;
            if parts.next().is_some() {
                return Err(parse("more than a node id and an address"));
            }
            map.insert(id, addr);
        }
        Ok(Self { path: path.to_owned(), map })
    }

    pub fn get(&self, id: &NodeId) -> Option<SocketAddr> {
        self.map.get(id).copied()
    }

    pub fn all(&self) -> &BTreeMap<NodeId, SocketAddr> {
        &self.map
    }

    /// Records `id` at `addr` and rewrites the file; a no-op when nothing changed.
    pub fn set(&mut self, id: NodeId, addr: SocketAddr) -> Result<(), HintsError> {
        if self.map.get(&id) == Some(&addr) {
            return Ok(());
        }
        let old = self.map.insert(id, addr);
        if let Err(e) = self.save() {
            match old {
                Some(a) => self.map.insert(id, a),
                None => self.map.remove(&id),
            };
            return Err(e);
        }
        Ok(())
    }

    fn save(&self) -> Result<(), HintsError> {
        let io = |source| HintsError::Io { path: self.path.display().to_string(), source };
        let tmp = self.path.with_extension("tmp");
        let mut f = std::fs::File::create(&tmp).map_err(io)?;
        let mut text = String::from("# node id        mesh UDP endpoint (hints; WireGuard authenticates)\n");
        for (id, addr) in &self.map {
            text.push_str(&format!("{id} {addr}\n"));
        }
        f.write_all(text.as_bytes()).map_err(io)?;
        f.sync_all().map_err(io)?;
        std::fs::rename(&tmp, &self.path).map_err(io)?;
        if let Some(dir) = self.path.parent() {
            std::fs::File::open(dir).and_then(|d| d.sync_all()).map_err(io)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn hints_round_trip_through_the_file_and_bad_lines_are_named() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("endpoints");
        let mut h = Hints::load(&path).unwrap();
        assert!(h.all().is_empty());
        let id = parse_node_id("0102030405060708").unwrap();
        h.set(id, "127.0.0.1:5000".parse().unwrap()).unwrap();
        h.set(id, "127.0.0.1:5001".parse().unwrap()).unwrap();
        let again = Hints::load(&path).unwrap();
        assert_eq!(again.get(&id), Some("127.0.0.1:5001".parse().unwrap()));
        assert_eq!(again.all().len(), 1);
        std::fs::write(&path, "0102030405060708 127.0.0.1:1\nnot-a-node 1.2.3.4:5\n").unwrap();
        let err = Hints::load(&path).unwrap_err().to_string();
        assert!(err.ends_with(":2: want a 16-hex-digit node id"), "{err}");
        assert_eq!(parse_node_id("010203040506070"), None);
        assert_eq!(parse_node_id("01020304050607zz"), None);
    }
}
