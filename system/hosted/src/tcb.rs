//! The hosted TCB: the component cores, their state, and request dispatch.

use crate::storage::FileStorage;
use ppn_journal::{Journal, MAX_RECORD, Recovery};
use ppn_ledger::{Ledger, Roots};
use ppn_node_core::{NodeCore, NodeKeys, NodeRecord, Replay, Runtime, StateError};
use ppn_wire::service::{Platform, ServiceState, ServiceStatus};
use ppn_wire::{ErrorCode, Header, Request, Response};
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::sync::Arc;
use std::time::{Instant, SystemTime, UNIX_EPOCH};
use zeroize::Zeroizing;

/// Name of the node journal in the state directory.
pub const NODE_JOURNAL: &str = "node.journal";
/// Name of the ledger journal in the state directory.
pub const LEDGER_JOURNAL: &str = "ledger.journal";
const LOCK_FILE: &str = "lock";

/// Why the TCB could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("state directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state directory {0} is in use by another ppn-tcb")]
    Locked(String),
    #[error("node journal: {0}")]
    Journal(String),
    #[error("ledger journal: {0}")]
    Ledger(String),
    #[error("node journal is inconsistent: {0}")]
    State(#[from] StateError),
    #[error("no entropy for the identity seed: {0}")]
    Entropy(getrandom::Error),
}

/// Services and whether this build answers them.
pub const SERVICES: [ServiceStatus; 4] = [
    ServiceStatus { service: 0x01, state: ServiceState::Ready },
    ServiceStatus { service: 0x02, state: ServiceState::Ready },
    ServiceStatus { service: 0x03, state: ServiceState::NotImplemented },
    ServiceStatus { service: 0x04, state: ServiceState::NotImplemented },
];

/// What opening the state found.
#[derive(Debug, Clone)]
pub struct OpenReport {
    pub created_identity: bool,
    pub boot_count: u32,
    /// Recovery of the node journal.
    pub journal: Recovery,
    /// What replaying the ledger journal found.
    pub ledger: ppn_ledger::OpenReport,
}

/// The hosted TCB.
#[derive(Debug)]
pub struct Tcb {
    node: NodeCore,
    /// The ledger owns the node's secret keys; the node core holds only public parts.
    ledger: Ledger<FileStorage>,
    _journal: Journal<FileStorage>,
    _lock: File,
    started: Instant,
    served: u64,
    failed: u64,
}

fn io_err(path: &Path) -> impl FnOnce(std::io::Error) -> OpenError + '_ {
    move |source| OpenError::Io { path: path.display().to_string(), source }
}

impl Tcb {
    /// Opens (or creates, mode 0700) the state directory, takes its lock, replays the node
    /// journal, creates the node identity on first start, opens the ledger (replaying and
    /// re-checking its journal), and records this boot.
    ///
    /// The ledger's fleet root set is this node's own signing key plus `extra_roots` (the keys of
    /// `--roots FILE`).
    pub fn open(state_dir: &Path, extra_roots: &Roots) -> Result<(Self, OpenReport), OpenError> {
        if !state_dir.exists() {
            fs::DirBuilder::new().recursive(true).mode(0o700).create(state_dir).map_err(io_err(state_dir))?;
        }
        fs::set_permissions(state_dir, fs::Permissions::from_mode(0o700)).map_err(io_err(state_dir))?;
        let lock_path = state_dir.join(LOCK_FILE);
        let lock =
            File::options().create(true).truncate(false).write(true).open(&lock_path).map_err(io_err(&lock_path))?;
        if lock.try_lock().is_err() {
            return Err(OpenError::Locked(state_dir.display().to_string()));
        }

        let path = state_dir.join(NODE_JOURNAL);
        let storage = FileStorage::open(&path).map_err(io_err(&path))?;
        let mut scratch = vec![0u8; MAX_RECORD];
        let mut replay = Replay::default();
        let (mut journal, recovery) = Journal::open(storage, &mut scratch, |k, p| replay.record(k, p))
            .map_err(|e| OpenError::Journal(e.to_string()))?;
        let recovered = replay.finish()?;

        let mut payload = [0u8; 32];
        let mut append = |journal: &mut Journal<FileStorage>, rec: &NodeRecord| {
            let (kind, n) = rec.encode(&mut payload);
            journal.append(kind, &payload[..n], &mut scratch).map_err(|e| OpenError::Journal(e.to_string()))
        };
        let created_identity = recovered.seed.is_none();
        let seed = match recovered.seed {
            Some(seed) => seed,
            None => {
                let mut seed = Zeroizing::new([0u8; 32]);
                getrandom::fill(&mut seed[..]).map_err(OpenError::Entropy)?;
                append(&mut journal, &NodeRecord::Identity { seed: seed.clone() })?;
                seed
            }
        };
        let keys = NodeKeys::from_seed(&seed);
        drop(seed);
        let mut roots = extra_roots.clone();
        if !roots.add(&keys.signing_public()) {
            // Cannot happen: the key was derived from a signing key.
            return Err(OpenError::Ledger("this node's own signing key is not a valid Ed25519 key".into()));
        }
        let boot_count = recovered.boot_count.saturating_add(1);
        let node = NodeCore::new(&keys, Platform::Hosted, env!("CARGO_PKG_VERSION"), boot_count);

        // The ledger opens before the boot is recorded: a ledger that cannot open is no boot.
        let ledger_path = state_dir.join(LEDGER_JOURNAL);
        let ledger_storage = FileStorage::open(&ledger_path).map_err(io_err(&ledger_path))?;
        let (ledger, ledger_report) =
            Ledger::open(keys, Arc::new(roots), ledger_storage).map_err(|e| OpenError::Ledger(e.to_string()))?;

        append(&mut journal, &NodeRecord::Boot { count: boot_count })?;
        payload.fill(0);

        let report = OpenReport { created_identity, boot_count, journal: recovery, ledger: ledger_report };
        let tcb = Self { node, ledger, _journal: journal, _lock: lock, started: Instant::now(), served: 0, failed: 0 };
        Ok((tcb, report))
    }

    pub fn node(&self) -> &NodeCore {
        &self.node
    }

    pub fn ledger(&self) -> &Ledger<FileStorage> {
        &self.ledger
    }

    /// Answers one request. Every service that has not landed answers `NotImplemented`.
    pub fn answer(&mut self, request: &Request) -> Response {
        let response = match request {
            Request::Node(r) => {
                let rt = Runtime {
                    uptime_ms: self.started.elapsed().as_millis() as u64,
                    requests_served: self.served,
                    requests_failed: self.failed,
                    services: &SERVICES,
                };
                Response::Node(self.node.handle(r, &rt))
            }
            Request::Ledger(r) => match self.ledger.handle(r, now_unix_s()) {
                Ok(answer) => Response::Ledger(answer),
                Err(refusal) => Response::error(refusal.code, refusal.detail),
            },
            Request::Lender(_) | Request::Attest(_) => {
                let service = request.service();
                let detail = format!("the {} service has not landed in this TCB build", service.name());
                Response::error(ErrorCode::NotImplemented, &detail)
            }
        };
        match response {
            Response::Error(_) => self.failed += 1,
            _ => self.served += 1,
        }
        response
    }

    /// Decodes a request frame and writes its response frame into `out` (at least
    /// `MAX_FRAME_LEN` bytes); returns the response frame's length. Never fails: an undecodable
    /// frame gets an error frame, with the request id if the header could be read, else 0.
    pub fn handle_frame(&mut self, frame: &[u8], out: &mut [u8]) -> usize {
        let (request_id, response) = match ppn_wire::decode_request(frame) {
            Ok((id, request)) => (id, self.answer(&request)),
            Err(e) => {
                self.failed += 1;
                let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                (id, Response::error(ErrorCode::BadFrame, &e.to_string()))
            }
        };
        encode_or_internal(request_id, &response, out)
    }

    /// The error frame for a stream-level error (oversize chunk, bad COBS).
    pub fn stream_error(&mut self, error: ppn_wire::Error, out: &mut [u8]) -> usize {
        self.failed += 1;
        encode_or_internal(0, &Response::error(ErrorCode::BadFrame, &error.to_string()), out)
    }
}

/// The TCB's own clock, in seconds since the Unix epoch (0 if the clock is before it). Token
/// expiry is decided by this clock, never by the proxy's.
fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

fn encode_or_internal(request_id: u32, response: &Response, out: &mut [u8]) -> usize {
    match ppn_wire::encode_response(request_id, response, out) {
        Ok(n) => n,
        // Every response type fits MAX_BODY_LEN (a wire test checks it); this is a last resort.
        Err(e) => ppn_wire::encode_response(request_id, &Response::error(ErrorCode::Internal, &e.to_string()), out)
            .expect("an error frame always fits MAX_FRAME_LEN"),
    }
}
