//! The client side of the TCB wire protocol, used by everything in the proxy.
//!
//! [`TcbClient`] (tokio) pipelines requests over one connection: any number of tasks may call
//! it at once; responses are matched to requests by request id. [`blocking::Client`] is the same
//! protocol for command-line tools and tests. Both speak to a hosted `ppn-tcb` on a Unix socket
//! and, through the same bytes, to the seL4 image's link PD.
//!
//! This crate holds no TCB secret and trusts nothing it receives beyond what the wire decoder
//! checks: a response only means what the TCB said, authenticated end to end where it matters
//! (signed records, tagged tokens), not by this transport.

use calls::TypedCall;
use ppn_wire::service::*;
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::{ErrorCode, Kind, MAX_FRAME_LEN, Request, Response};
use std::collections::HashMap;
use std::path::Path;
use std::sync::atomic::{AtomicU32, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::net::UnixStream;
use tokio::sync::oneshot;

pub mod blocking;
pub mod calls;
pub mod sync;

/// How long a call waits for its response by default.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(10);

/// Client errors.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    #[error("TCB connection: {0}")]
    Io(#[from] std::io::Error),
    #[error("bad frame from the TCB: {0}")]
    Wire(#[from] ppn_wire::Error),
    #[error("TCB answered {code}: {detail}")]
    Tcb { code: ErrorCode, detail: String },
    #[error("TCB answered kind {got:?} to a {expected:?} request")]
    UnexpectedResponse { expected: Kind, got: Kind },
    #[error("no answer from the TCB within {0:?}")]
    Timeout(Duration),
    #[error("the TCB closed the connection")]
    Closed,
    #[error("{len} {what} do not fit in one frame (at most {max})")]
    TooLarge { what: &'static str, len: usize, max: usize },
}

/// Encodes a request as COBS stream bytes.
pub fn encode_request_stream(request_id: u32, request: &Request) -> Result<Vec<u8>, ClientError> {
    let mut frame = vec![0u8; MAX_FRAME_LEN];
    let n = ppn_wire::encode_request(request_id, request, &mut frame)?;
    let mut enc = vec![0u8; MAX_ENCODED_LEN];
    let m = stream::encode(&frame[..n], &mut enc)?;
    enc.truncate(m);
    Ok(enc)
}

/// Turns a decoded response to `request` into the caller's answer: error frames become
/// [`ClientError::Tcb`], and a response of another kind [`ClientError::UnexpectedResponse`].
pub fn check_response(request: &Request, response: Response) -> Result<Response, ClientError> {
    match response {
        Response::Error(e) => Err(ClientError::Tcb { code: e.code, detail: e.detail.as_str().to_owned() }),
        r if r.kind() != request.kind() => {
            Err(ClientError::UnexpectedResponse { expected: request.kind(), got: r.kind() })
        }
        r => Ok(r),
    }
}

type Pending = Arc<Mutex<HashMap<u32, oneshot::Sender<Result<Response, ppn_wire::Error>>>>>;

/// The write half of whatever stream the client speaks over.
type Writer = Box<dyn AsyncWrite + Send + Unpin>;

/// A pipelined async client of one TCB.
pub struct TcbClient {
    writer: tokio::sync::Mutex<Writer>,
    pending: Pending,
    next_id: AtomicU32,
    timeout: Duration,
    reader: tokio::task::JoinHandle<()>,
}

impl std::fmt::Debug for TcbClient {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TcbClient").field("timeout", &self.timeout).finish_non_exhaustive()
    }
}

impl Drop for TcbClient {
    fn drop(&mut self) {
        self.reader.abort();
    }
}

impl TcbClient {
    /// Connects to the TCB socket at `path`.
    pub async fn connect(path: impl AsRef<Path>) -> Result<Self, ClientError> {
        Self::over(UnixStream::connect(path).await?).await
    }

    /// Speaks the wire protocol over any byte stream: a TCB socket, or a peer's relay of its
    /// TCB's read-only ledger answers reached through the mesh.
    pub async fn over<S: AsyncRead + AsyncWrite + Send + Unpin + 'static>(mut stream: S) -> Result<Self, ClientError> {
        // One 0x00 ends whatever a previous connection left half-sent on a shared byte stream
        // (the seL4 image's virtio-console); an empty chunk is ignored (docs/wire.md).
        stream.write_all(&[0]).await?;
        let (mut read, write) = tokio::io::split(stream);
        let pending: Pending = Arc::default();
        let table = Arc::clone(&pending);
        let reader = tokio::spawn(async move {
            let mut deframer = Box::new(Deframer::new());
            let mut buf = vec![0u8; 64 * 1024];
            loop {
                let n = match read.read(&mut buf).await {
                    Ok(0) | Err(_) => break,
                    Ok(n) => n,
                };
                let mut rest = &buf[..n];
                while !rest.is_empty() {
                    let (used, event) = deframer.push(rest);
                    rest = &rest[used..];
                    let Some(Ok(frame)) = event else { continue };
                    // A frame we cannot read has no request id we could trust: drop it, and
                    // the call it belonged to times out.
                    let Ok((id, response)) = ppn_wire::decode_response(frame) else { continue };
                    let waiter = table.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
                    if let Some(tx) = waiter {
                        let _ = tx.send(Ok(response));
                    }
                }
            }
            // Connection closed: every waiting call learns it now.
            table.lock().unwrap_or_else(|p| p.into_inner()).clear();
        });
        Ok(Self {
            writer: tokio::sync::Mutex::new(Box::new(write)),
            pending,
            next_id: AtomicU32::new(1),
            timeout: DEFAULT_TIMEOUT,
            reader,
        })
    }

    /// Sets how long each call waits for its response.
    pub fn with_timeout(mut self, timeout: Duration) -> Self {
        self.timeout = timeout;
        self
    }

    /// Sends `request` and waits for its response.
    pub async fn call(&self, request: &Request) -> Result<Response, ClientError> {
        // Request id 0 is reserved for error frames that answer an unreadable header.
        let id = loop {
            let id = self.next_id.fetch_add(1, Ordering::Relaxed);
            if id != 0 {
                break id;
            }
        };
        if self.reader.is_finished() {
            return Err(ClientError::Closed);
        }
        let bytes = encode_request_stream(id, request)?;
        let (tx, rx) = oneshot::channel();
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).insert(id, tx);
        let sent = async {
            let mut w = self.writer.lock().await;
            w.write_all(&bytes).await
        }
        .await;
        if let Err(e) = sent {
            self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
            return Err(e.into());
        }
        let answer = tokio::time::timeout(self.timeout, rx).await;
        self.pending.lock().unwrap_or_else(|p| p.into_inner()).remove(&id);
        match answer {
            Err(_) => Err(ClientError::Timeout(self.timeout)),
            Ok(Err(_)) => Err(ClientError::Closed),
            Ok(Ok(response)) => check_response(request, response?),
        }
    }

    /// Sends a typed call and reads its answer.
    pub async fn run<T>(&self, call: TypedCall<T>) -> Result<T, ClientError> {
        let response = self.call(call.request()).await?;
        call.finish(response)
    }

    pub async fn identity(&self) -> Result<NodeIdentity, ClientError> {
        self.run(calls::identity()).await
    }

    pub async fn public_keys(&self) -> Result<NodePublicKeys, ClientError> {
        self.run(calls::public_keys()).await
    }

    pub async fn status(&self) -> Result<NodeStatus, ClientError> {
        self.run(calls::status()).await
    }

    /// See [`calls::issue_grant`].
    pub async fn issue_grant(
        &self,
        grantee: NodeId,
        resource_type: ResourceType,
        resource_id: u64,
        expires_unix_s: u64,
    ) -> Result<Grant, ClientError> {
        self.run(calls::issue_grant(grantee, resource_type, resource_id, expires_unix_s)).await
    }

    /// See [`calls::verify_token`].
    pub async fn verify_token(&self, token: &[u8]) -> Result<Verdict, ClientError> {
        self.run(calls::verify_token(token)?).await
    }

    /// See [`calls::revoke`]. Returns the id of the record the TCB appended.
    pub async fn revoke(&self, target: RevokeTarget) -> Result<Digest, ClientError> {
        self.run(calls::revoke(target)).await
    }

    /// See [`calls::ingest_records`]. Returns one outcome per record.
    pub async fn ingest_records<R: AsRef<[u8]>>(&self, records: &[R]) -> Result<Vec<IngestOutcome>, ClientError> {
        self.run(calls::ingest_records(records)?).await
    }

    /// See [`calls::heads`].
    pub async fn heads(&self) -> Result<Heads, ClientError> {
        self.run(calls::heads()).await
    }

    /// See [`calls::records_lacking`].
    pub async fn records_lacking(&self, peer_heads: &[Digest], limit: u16) -> Result<Records, ClientError> {
        self.run(calls::records_lacking(peer_heads, limit)?).await
    }

    /// See [`calls::ledger_summary`].
    pub async fn ledger_summary(&self) -> Result<LedgerSummary, ClientError> {
        self.run(calls::ledger_summary()).await
    }

    /// See [`calls::ledger_roots`].
    pub async fn ledger_roots(&self) -> Result<Vec<PublicKey>, ClientError> {
        self.run(calls::ledger_roots()).await
    }

    /// Starts a pairing session (see `ppn pair`).
    pub async fn pair_begin(
        &self,
        role: PairRole,
        code: &str,
        wireguard_key: [u8; 32],
    ) -> Result<PairProgress, ClientError> {
        self.run(calls::pair_begin(role, code, wireguard_key)?).await
    }

    /// Hands the pairing session the peer's message.
    pub async fn pair_step(&self, message: &[u8]) -> Result<PairProgress, ClientError> {
        self.run(calls::pair_step(message)?).await
    }

    /// The operator's verdict on the paired peer (with the peer's admission record of this node
    /// if the peer decided first); the admission record this node signed, when admitted.
    pub async fn pair_decide(
        &self,
        peer: NodeId,
        sas: u32,
        admit: bool,
        peer_record: &[u8],
    ) -> Result<PairDecided, ClientError> {
        self.run(calls::pair_decide(peer, sas, admit, peer_record)?).await
    }

    /// The fleet's members: roots and admitted nodes, their keys, mesh keys and trust.
    pub async fn ledger_members(&self) -> Result<Vec<Member>, ClientError> {
        self.run(calls::ledger_members()).await
    }

    /// See [`calls::endorse`].
    pub async fn endorse(&self, token: &[u8]) -> Result<Signature, ClientError> {
        self.run(calls::endorse(token)?).await
    }

    /// See [`calls::verify_endorsed`].
    pub async fn verify_endorsed(&self, token: &[u8], signature: &Signature) -> Result<Verdict, ClientError> {
        self.run(calls::verify_endorsed(token, signature)?).await
    }

    /// See [`calls::pool_status`].
    pub async fn pool_status(&self) -> Result<Pool, ClientError> {
        self.run(calls::pool_status()).await
    }

    /// See [`calls::reserve`].
    pub async fn reserve(
        &self,
        borrower: NodeId,
        blocks: u32,
        expires_unix_s: u64,
    ) -> Result<Reservation, ClientError> {
        self.run(calls::reserve(borrower, blocks, expires_unix_s)).await
    }

    /// See [`calls::commit_lease`].
    pub async fn commit_lease(&self, reservation_id: u64) -> Result<Lease, ClientError> {
        self.run(calls::commit_lease(reservation_id)).await
    }

    /// See [`calls::release`].
    pub async fn release(&self, lease_id: u64) -> Result<Released, ClientError> {
        self.run(calls::release(lease_id)).await
    }

    /// See [`calls::sign_root_hash`].
    pub async fn sign_root_hash(
        &self,
        image: &str,
        root_hash: [u8; 32],
        salt: [u8; 32],
        data_blocks: u64,
        hash_offset: u64,
    ) -> Result<Vec<u8>, ClientError> {
        self.run(calls::sign_root_hash(image, root_hash, salt, data_blocks, hash_offset)?).await
    }

    /// See [`calls::sign_report`].
    pub async fn sign_report(
        &self,
        vm: &str,
        root_hash: [u8; 32],
        provisioning: &[u8],
        nonce: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.run(calls::sign_report(vm, root_hash, provisioning, nonce)?).await
    }
}
