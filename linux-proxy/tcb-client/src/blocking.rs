//! A blocking client: one request at a time, for command-line tools and tests. It can also send
//! raw bytes, which the conformance suite uses to feed a TCB garbage.

use crate::calls::{self, TypedCall};
use crate::{ClientError, check_response, encode_request_stream};
use ppn_wire::service::*;
use ppn_wire::stream::Deframer;
use ppn_wire::{Request, Response};
use std::io::{Read, Write};
use std::os::unix::net::UnixStream;
use std::path::Path;
use std::time::Duration;

/// A blocking connection to a TCB.
#[derive(Debug)]
pub struct Client {
    stream: UnixStream,
    deframer: Box<Deframer>,
    buf: Vec<u8>,
    /// Bytes read but not yet deframed: `buf[start..end]`.
    start: usize,
    end: usize,
    next_id: u32,
}

impl Client {
    /// Connects, with `timeout` on every read and write.
    pub fn connect(path: impl AsRef<Path>, timeout: Duration) -> Result<Self, ClientError> {
        let mut stream = UnixStream::connect(path)?;
        stream.set_read_timeout(Some(timeout))?;
        stream.set_write_timeout(Some(timeout))?;
        // One 0x00 ends whatever a previous connection left half-sent on a shared byte stream
        // (the seL4 image's virtio-console is one stream for every connection); an empty chunk
        // is ignored (docs/wire.md, stream layer).
        stream.write_all(&[0])?;
        Ok(Self { stream, deframer: Box::new(Deframer::new()), buf: vec![0; 64 * 1024], start: 0, end: 0, next_id: 1 })
    }

    /// Sends `request` and returns its response; error frames become [`ClientError::Tcb`].
    /// Responses to other request ids (answers to raw bytes sent earlier) are skipped.
    pub fn call(&mut self, request: &Request) -> Result<Response, ClientError> {
        let id = self.next_id;
        self.next_id = self.next_id.wrapping_add(1).max(1);
        self.stream.write_all(&encode_request_stream(id, request)?)?;
        loop {
            let (got, response) = self.recv()?;
            if got == id {
                return check_response(request, response);
            }
        }
    }

    /// Sends a typed call and reads its answer.
    pub fn run<T>(&mut self, call: TypedCall<T>) -> Result<T, ClientError> {
        let response = self.call(call.request())?;
        call.finish(response)
    }

    pub fn identity(&mut self) -> Result<NodeIdentity, ClientError> {
        self.run(calls::identity())
    }

    pub fn public_keys(&mut self) -> Result<NodePublicKeys, ClientError> {
        self.run(calls::public_keys())
    }

    pub fn status(&mut self) -> Result<NodeStatus, ClientError> {
        self.run(calls::status())
    }

    /// See [`calls::issue_grant`].
    pub fn issue_grant(
        &mut self,
        grantee: NodeId,
        resource_type: ResourceType,
        resource_id: u64,
        expires_unix_s: u64,
    ) -> Result<Grant, ClientError> {
        self.run(calls::issue_grant(grantee, resource_type, resource_id, expires_unix_s))
    }

    /// See [`calls::verify_token`].
    pub fn verify_token(&mut self, token: &[u8]) -> Result<Verdict, ClientError> {
        self.run(calls::verify_token(token)?)
    }

    /// See [`calls::revoke`]. Returns the id of the record the TCB appended.
    pub fn revoke(&mut self, target: RevokeTarget) -> Result<Digest, ClientError> {
        self.run(calls::revoke(target))
    }

    /// See [`calls::ingest_records`]. Returns one outcome per record.
    pub fn ingest_records<R: AsRef<[u8]>>(&mut self, records: &[R]) -> Result<Vec<IngestOutcome>, ClientError> {
        self.run(calls::ingest_records(records)?)
    }

    /// See [`calls::heads`].
    pub fn heads(&mut self) -> Result<Heads, ClientError> {
        self.run(calls::heads())
    }

    /// See [`calls::records_lacking`].
    pub fn records_lacking(&mut self, peer_heads: &[Digest], limit: u16) -> Result<Records, ClientError> {
        self.run(calls::records_lacking(peer_heads, limit)?)
    }

    /// See [`calls::ledger_summary`].
    pub fn ledger_summary(&mut self) -> Result<LedgerSummary, ClientError> {
        self.run(calls::ledger_summary())
    }

    /// See [`calls::ledger_roots`].
    pub fn ledger_roots(&mut self) -> Result<Vec<PublicKey>, ClientError> {
        self.run(calls::ledger_roots())
    }

    pub fn ledger_members(&mut self) -> Result<Vec<Member>, ClientError> {
        self.run(calls::ledger_members())
    }

    /// See [`calls::endorse`].
    pub fn endorse(&mut self, token: &[u8]) -> Result<Signature, ClientError> {
        self.run(calls::endorse(token)?)
    }

    /// See [`calls::verify_endorsed`].
    pub fn verify_endorsed(&mut self, token: &[u8], signature: &Signature) -> Result<Verdict, ClientError> {
        self.run(calls::verify_endorsed(token, signature)?)
    }

    /// See [`calls::pool_status`].
    pub fn pool_status(&mut self) -> Result<Pool, ClientError> {
        self.run(calls::pool_status())
    }

    /// See [`calls::reserve`].
    pub fn reserve(&mut self, borrower: NodeId, blocks: u32, expires_unix_s: u64) -> Result<Reservation, ClientError> {
        self.run(calls::reserve(borrower, blocks, expires_unix_s))
    }

    /// See [`calls::commit_lease`].
    pub fn commit_lease(&mut self, reservation_id: u64) -> Result<Lease, ClientError> {
        self.run(calls::commit_lease(reservation_id))
    }

    /// See [`calls::release`].
    pub fn release(&mut self, lease_id: u64) -> Result<Released, ClientError> {
        self.run(calls::release(lease_id))
    }

    /// See [`calls::sign_root_hash`].
    pub fn sign_root_hash(
        &mut self,
        image: &str,
        root_hash: [u8; 32],
        salt: [u8; 32],
        data_blocks: u64,
        hash_offset: u64,
    ) -> Result<Vec<u8>, ClientError> {
        self.run(calls::sign_root_hash(image, root_hash, salt, data_blocks, hash_offset)?)
    }

    /// See [`calls::sign_report`].
    pub fn sign_report(
        &mut self,
        vm: &str,
        root_hash: [u8; 32],
        provisioning: &[u8],
        nonce: &[u8],
    ) -> Result<Vec<u8>, ClientError> {
        self.run(calls::sign_report(vm, root_hash, provisioning, nonce)?)
    }

    /// Writes raw bytes to the TCB.
    pub fn send_raw(&mut self, bytes: &[u8]) -> Result<(), ClientError> {
        self.stream.write_all(bytes)?;
        Ok(())
    }

    /// Reads the next response frame: its request id and the decoded response.
    pub fn recv(&mut self) -> Result<(u32, Response), ClientError> {
        loop {
            while self.start < self.end {
                let (used, event) = self.deframer.push(&self.buf[self.start..self.end]);
                self.start += used;
                match event {
                    None => {}
                    Some(Ok(frame)) => return Ok(ppn_wire::decode_response(frame)?),
                    Some(Err(e)) => return Err(e.into()),
                }
            }
            let n = self.stream.read(&mut self.buf).map_err(|e| match e.kind() {
                std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut => {
                    ClientError::Timeout(self.stream.read_timeout().ok().flatten().unwrap_or_default())
                }
                _ => ClientError::Io(e),
            })?;
            if n == 0 {
                return Err(ClientError::Closed);
            }
            self.start = 0;
            self.end = n;
        }
    }

    /// Shuts the writing half, telling the TCB no more requests come.
    pub fn shutdown_write(&self) -> Result<(), ClientError> {
        self.stream.shutdown(std::net::Shutdown::Write)?;
        Ok(())
    }
}
