//! The hosted TCB: the component cores, their state, and request dispatch.

use crate::storage::FileStorage;
use ppn_journal::Journal;
use ppn_ledger::{Ledger, Roots};
use ppn_node_core::NodeCore;
use ppn_tcb_core::{BootError, BootReport, TcbCore};
use ppn_wire::service::Platform;
use ppn_wire::{Request, Response};
use std::fs::{self, File};
use std::os::unix::fs::{DirBuilderExt, PermissionsExt};
use std::path::Path;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

/// Name of the node journal in the state directory.
pub const NODE_JOURNAL: &str = "node.journal";
/// Name of the ledger journal in the state directory.
pub const LEDGER_JOURNAL: &str = "ledger.journal";
/// Name of the lender journal in the state directory (only when the node lends).
pub const LENDER_JOURNAL: &str = "lender.journal";
const LOCK_FILE: &str = "lock";

/// Why the TCB could not open its state.
#[derive(Debug, thiserror::Error)]
pub enum OpenError {
    #[error("state directory {path}: {source}")]
    Io { path: String, source: std::io::Error },
    #[error("state directory {0} is in use by another ppn-tcb")]
    Locked(String),
    #[error(transparent)]
    Boot(#[from] BootError),
    #[error("lender: {0}")]
    Lender(#[from] ppn_lender::Error),
}

/// What opening the state found.
pub type OpenReport = BootReport;

/// The operating system's entropy (getrandom), for pairing sessions.
struct OsEntropy;

impl ppn_tcb_core::Entropy for OsEntropy {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), String> {
        getrandom::fill(out).map_err(|e| e.to_string())
    }
}

/// The hosted TCB.
#[derive(Debug)]
pub struct Tcb {
    /// The node and ledger cores and their dispatch (the ledger owns the node's secret keys;
    /// the node core holds only public parts).
    core: TcbCore<FileStorage>,
    _journal: Journal<FileStorage>,
    _lock: File,
    started: Instant,
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
    ///
    /// With `lend_blocks`, the node lends that many blocks of 2 MiB: the lender journal and the
    /// pool file live in the state directory too, and the pool size is fixed at the first open.
    pub fn open(
        state_dir: &Path,
        extra_roots: &Roots,
        lend_blocks: Option<u32>,
    ) -> Result<(Self, OpenReport), OpenError> {
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
        let ledger_path = state_dir.join(LEDGER_JOURNAL);
        let ledger_storage = FileStorage::open(&ledger_path).map_err(io_err(&ledger_path))?;
        let booted = ppn_tcb_core::boot(
            storage,
            ledger_storage,
            extra_roots,
            Platform::Hosted,
            env!("CARGO_PKG_VERSION"),
            |seed: &mut [u8; 32]| getrandom::fill(seed),
        )?;
        let mut core = booted.core.with_entropy(Box::new(OsEntropy));
        if let Some(blocks) = lend_blocks {
            let pool_path = state_dir.join(crate::pool::POOL_FILE);
            let pool = crate::pool::FilePool::open(&pool_path, blocks).map_err(io_err(&pool_path))?;
            let path = state_dir.join(LENDER_JOURNAL);
            let storage = FileStorage::open(&path).map_err(io_err(&path))?;
            let (service, _) = ppn_tcb_core::LenderService::open(storage, blocks, Box::new(pool))?;
            core = core.with_lender(service);
        }
        let tcb = Self { core, _journal: booted.node_journal, _lock: lock, started: Instant::now() };
        Ok((tcb, booted.report))
    }

    pub fn node(&self) -> &NodeCore {
        self.core.node()
    }

    pub fn ledger(&self) -> &Ledger<FileStorage> {
        self.core.ledger()
    }

    /// The lender's pool, if this node lends.
    pub fn lender_pool(&self) -> Option<ppn_wire::service::Pool> {
        self.core.lender().map(|l| l.pool())
    }

    fn uptime_ms(&self) -> u64 {
        self.started.elapsed().as_millis() as u64
    }

    /// Answers one request (see [`TcbCore::answer`]).
    pub fn answer(&mut self, request: &Request) -> Response {
        let uptime = self.uptime_ms();
        self.core.answer(request, uptime, now_unix_s())
    }

    /// Decodes a request frame and writes its response frame into `out` (see
    /// [`TcbCore::handle_frame`]); returns the response frame's length.
    pub fn handle_frame(&mut self, frame: &[u8], out: &mut [u8]) -> usize {
        let uptime = self.uptime_ms();
        self.core.handle_frame(frame, out, uptime, now_unix_s())
    }

    /// The error frame for a stream-level error (oversize chunk, bad COBS).
    pub fn stream_error(&mut self, error: ppn_wire::Error, out: &mut [u8]) -> usize {
        self.core.refuse(0, &error.to_string(), out)
    }
}

/// The TCB's own clock, in seconds since the Unix epoch (0 if the clock is before it). Token
/// expiry is decided by this clock, never by the proxy's.
fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}
