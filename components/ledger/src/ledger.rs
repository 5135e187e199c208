//! The ledger: keys, fleet roots, the record DAG, revocation state, tokens, and its journal.

extern crate alloc;
use crate::dag::Dag;
use crate::record::{Body, MAX_PARENTS, Record, RecordId};
use crate::revocations::Revocations;
use crate::token::{Claims, TokenBytes, TokenKey};
use alloc::collections::{BTreeMap, VecDeque};
use alloc::sync::Arc;
use alloc::vec::Vec;
use ed25519_dalek::{Signer, VerifyingKey};
use ppn_journal::{Journal, MAX_RECORD, Storage};
use ppn_node_core::{NodeKeys, node_id_of};
use ppn_wire::ErrorCode;
use ppn_wire::message::{LedgerRequest, LedgerResponse};
use ppn_wire::service::Record as WireRecord;
use ppn_wire::service::*;
use zerocopy::IntoBytes;

/// Journal record kinds of the ledger log.
pub mod entry {
    /// An accepted ledger record (its canonical bytes).
    pub const RECORD: u8 = 1;
    /// Grant sequence numbers below this (u64 LE) may have been issued.
    pub const SEQUENCE_RESERVED: u8 = 2;
    /// A key added to the fleet root set by pairing (`Ledger::add_root`): 32 bytes.
    pub const ROOT: u8 = 3;
}

/// Records waiting for parents, at most this many; the oldest is dropped for a new one.
pub const MAX_PENDING: usize = 1024;
/// Grant sequence numbers reserved per journal write.
pub const SEQUENCE_BLOCK: u64 = 1024;

/// The fleet root set: nodes admitted by the operator, not by a record.
#[derive(Debug, Clone, Default)]
pub struct Roots {
    keys: BTreeMap<NodeId, VerifyingKey>,
}

impl Roots {
    /// Adds a node's Ed25519 public key; `false` if it is not a valid key.
    pub fn add(&mut self, key: &[u8; 32]) -> bool {
        match VerifyingKey::from_bytes(key) {
            Ok(k) => {
                self.keys.insert(node_id_of(key), k);
                true
            }
            Err(_) => false,
        }
    }

    pub fn get(&self, node: &NodeId) -> Option<&VerifyingKey> {
        self.keys.get(node)
    }

    pub fn len(&self) -> usize {
        self.keys.len()
    }

    pub fn is_empty(&self) -> bool {
        self.keys.is_empty()
    }

    pub fn keys(&self) -> impl Iterator<Item = (&NodeId, &VerifyingKey)> {
        self.keys.iter()
    }
}

/// A refused request: the wire error code and a detail for the operator.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Refusal {
    pub code: ErrorCode,
    pub detail: &'static str,
}

const fn refuse(code: ErrorCode, detail: &'static str) -> Refusal {
    Refusal { code, detail }
}

/// What opening a ledger found in its journal.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OpenReport {
    pub records: u64,
    /// Journal records that no longer pass the checks (counted, skipped).
    pub rejected: u64,
    pub truncated_bytes: u64,
}

/// Why a record was not accepted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Reject {
    /// The record fails a check; every replica refuses it alike.
    Check(IngestOutcome),
    /// The journal could not be written; nothing changed.
    Storage,
}

const STORAGE: Refusal = refuse(ErrorCode::Internal, "the ledger journal could not be written");

#[derive(Debug)]
struct Admission {
    key: VerifyingKey,
    records: Vec<RecordId>,
    /// The WireGuard key each admission record names: (created, record id, key).
    wireguard: Vec<(u64, RecordId, [u8; 32])>,
}

#[derive(Debug, Default)]
struct Pending {
    records: BTreeMap<RecordId, Record>,
    /// Arrival order, for dropping the oldest.
    fifo: VecDeque<RecordId>,
    /// Missing parent -> records waiting for it.
    waiting: BTreeMap<RecordId, Vec<RecordId>>,
    dropped: u64,
}

/// The capability ledger of one node.
#[derive(Debug)]
pub struct Ledger<S: Storage> {
    keys: NodeKeys,
    token_key: TokenKey,
    node_id: NodeId,
    roots: Arc<Roots>,
    dag: Dag,
    admitted: BTreeMap<NodeId, Admission>,
    /// NodeRevoked records per revoked node, for the causal check of later records.
    revoked_by: BTreeMap<NodeId, Vec<RecordId>>,
    revocations: Revocations,
    pending: Pending,
    journal: Journal<S>,
    scratch: Vec<u8>,
    next_sequence: u64,
    reserved_sequence: u64,
}

impl<S: Storage> Ledger<S> {
    /// Opens the ledger on `storage`, replaying and re-checking every record in it.
    pub fn open(
        keys: NodeKeys,
        roots: Arc<Roots>,
        storage: S,
    ) -> Result<(Self, OpenReport), ppn_journal::Error<S::Error>> {
        let mut scratch = alloc::vec![0u8; MAX_RECORD];
        let mut entries: Vec<(u8, Vec<u8>)> = Vec::new();
        let (journal, recovery) = Journal::open(storage, &mut scratch, |k, p| entries.push((k, p.to_vec())))?;
        let node_id = keys.node_id();
        let mut ledger = Ledger {
            token_key: TokenKey::new(keys.grant_key()),
            keys,
            node_id,
            roots,
            dag: Dag::default(),
            admitted: BTreeMap::new(),
            revoked_by: BTreeMap::new(),
            revocations: Revocations::default(),
            pending: Pending::default(),
            journal,
            scratch,
            next_sequence: 0,
            reserved_sequence: 0,
        };
        let mut report = OpenReport { truncated_bytes: recovery.truncated_bytes, ..OpenReport::default() };
        for (kind, payload) in entries {
            match kind {
                entry::RECORD => match Record::decode(&payload) {
                    // The log's checksum is not a MAC: whoever can write the file can reorder or
                    // repeat entries. A duplicate or an entry before its parents is skipped, so
                    // the DAG invariants hold whatever the file says.
                    Ok(r) if !ledger.dag.contains(&r.id) && ledger.dag.parents_present(&r) => {
                        match ledger.accept(r, false) {
                            Ok(()) => report.records += 1,
                            Err(_) => report.rejected += 1,
                        }
                    }
                    _ => report.rejected += 1,
                },
                entry::SEQUENCE_RESERVED if payload.len() == 8 => {
                    let mut b = [0u8; 8];
                    b.copy_from_slice(&payload);
                    ledger.reserved_sequence = ledger.reserved_sequence.max(u64::from_le_bytes(b));
                }
                entry::ROOT if payload.len() == 32 => {
                    let mut key = [0u8; 32];
                    key.copy_from_slice(&payload);
                    if !ledger.insert_root(&key) {
                        report.rejected += 1;
                    }
                }
                _ => report.rejected += 1,
            }
        }
        // Numbers below the reservation may have been handed out before a crash: skip them.
        ledger.next_sequence = ledger.reserved_sequence;
        Ok((ledger, report))
    }

    pub fn node_id(&self) -> NodeId {
        self.node_id
    }

    pub fn roots(&self) -> &Roots {
        &self.roots
    }

    /// Adds `key`'s node to the fleet root set, durably (a `ROOT` journal entry, replayed at
    /// open): what the operator's approval of a pairing does, so that the two paired TCBs accept
    /// each other's records from then on. `Ok(false)` if it was a root already.
    ///
    /// Roots are this replica's own configuration, like `--roots FILE`: another replica accepts
    /// this node's records about the new root only through admission records (docs/ledger.md).
    pub fn add_root(&mut self, key: &[u8; 32]) -> Result<bool, Refusal> {
        if VerifyingKey::from_bytes(key).is_err() {
            return Err(refuse(ErrorCode::Rejected, "not a valid Ed25519 public key"));
        }
        if self.roots.get(&node_id_of(key)).is_some() {
            return Ok(false);
        }
        self.journal.append(entry::ROOT, key, &mut self.scratch).map_err(|_| STORAGE)?;
        Ok(self.insert_root(key))
    }

    /// Puts `key` in the root set in memory. A node id that an accepted admission gave another
    /// key is revoked, as when the admission comes second.
    fn insert_root(&mut self, key: &[u8; 32]) -> bool {
        let node = node_id_of(key);
        if !Arc::make_mut(&mut self.roots).add(key) {
            return false;
        }
        if self.admitted.get(&node).is_some_and(|a| a.key.as_bytes() != key) {
            self.revocations.revoke_node(node);
        }
        true
    }

    pub fn dag(&self) -> &Dag {
        &self.dag
    }

    pub fn revocations(&self) -> &Revocations {
        &self.revocations
    }

    pub fn pending_len(&self) -> usize {
        self.pending.records.len()
    }

    pub fn journal_storage(&self) -> &S {
        self.journal.storage()
    }

    /// The key of `author` if it is a root or admitted by an accepted record.
    fn author_key(&self, author: &NodeId) -> Option<VerifyingKey> {
        self.roots.get(author).copied().or_else(|| self.admitted.get(author).map(|a| a.key))
    }

    /// True when `node` is not revoked and is a root or holds a valid admission.
    ///
    /// An admission is valid when its author is a root or validly admitted itself, and is not
    /// void: an admission whose author has been revoked is void unless it precedes (is an
    /// ancestor of) one of that author's revocations. So a revoked node that keeps signing with
    /// old parents cannot bring in new nodes. This is a function of the set of accepted
    /// records alone, so every replica with the same records agrees.
    pub fn is_trusted(&self, node: &NodeId) -> bool {
        if self.revocations.node_revoked(node) {
            return false;
        }
        self.roots.get(node).is_some()
            || self.admitted.get(node).is_some_and(|a| a.records.iter().any(|n| self.admission_valid(n, 0)))
    }

    fn admission_valid(&self, admission: &RecordId, depth: usize) -> bool {
        // Admission chains follow the DAG's ancestry, so they are acyclic; the bound is a guard.
        let Some(r) = self.dag.get(admission) else { return false };
        if depth > 64 {
            return false;
        }
        if let Some(revs) = self.revoked_by.get(&r.author)
            && !revs.iter().any(|v| self.dag.reaches_any(core::slice::from_ref(v), core::slice::from_ref(admission)))
        {
            return false;
        }
        self.roots.get(&r.author).is_some()
            || self
                .admitted
                .get(&r.author)
                .is_some_and(|a| a.records.iter().any(|m| self.admission_valid(m, depth + 1)))
    }

    /// The acceptance checks of a record whose parents are all present. Each depends only on
    /// the record and its ancestors, so every replica decides alike, in any delivery order:
    /// - the author is a root, or admitted by a record among its ancestors;
    /// - the signature checks under the author's key;
    /// - no revocation of the author is among its ancestors (records the author made before
    ///   its revocation stay valid).
    fn check(&self, r: &Record, signed_here: bool) -> Result<(), IngestOutcome> {
        let key = self.author_key(&r.author).ok_or(IngestOutcome::UnknownAuthor)?;
        if !signed_here && !r.signature_ok(&key) {
            return Err(IngestOutcome::BadSignature);
        }
        if self.roots.get(&r.author).is_none() {
            let admissions = self.admitted.get(&r.author).map(|a| &a.records[..]).unwrap_or(&[]);
            if !self.dag.reaches_any(&r.parents, admissions) {
                return Err(IngestOutcome::UnknownAuthor);
            }
        }
        if let Some(revs) = self.revoked_by.get(&r.author)
            && self.dag.reaches_any(&r.parents, revs)
        {
            return Err(IngestOutcome::RevokedAuthor);
        }
        Ok(())
    }

    /// Checks, persists (if `persist`), and applies one record whose parents are present.
    fn accept(&mut self, r: Record, persist: bool) -> Result<(), Reject> {
        self.accept_checked(r, persist, false)
    }

    /// [`Ledger::accept`]; `signed_here` skips the signature check of a record this TCB has just
    /// signed with its own key (the other rules still apply).
    fn accept_checked(&mut self, r: Record, persist: bool, signed_here: bool) -> Result<(), Reject> {
        self.check(&r, signed_here).map_err(Reject::Check)?;
        if persist {
            // Durable before it counts: a crash after this line replays the record.
            let bytes = r.bytes.clone();
            self.journal.append(entry::RECORD, &bytes, &mut self.scratch).map_err(|_| Reject::Storage)?;
        }
        match r.body {
            Body::NodeAdmitted { key, wireguard } => {
                let node = node_id_of(&key);
                match VerifyingKey::from_bytes(&key) {
                    Ok(vk) => {
                        let a = self.admitted.entry(node).or_insert(Admission {
                            key: vk,
                            records: Vec::new(),
                            wireguard: Vec::new(),
                        });
                        if a.key.as_bytes() != &key {
                            // Two keys claim one node id: trust neither, in any delivery order.
                            self.revocations.revoke_node(node);
                        }
                        a.records.push(r.id);
                        a.wireguard.push((r.created_unix_s, r.id, wireguard));
                    }
                    Err(_) => self.revocations.revoke_node(node),
                }
                if self.roots.get(&node).is_some_and(|k| k.as_bytes() != &key) {
                    self.revocations.revoke_node(node);
                }
            }
            Body::NodeRevoked { node } => {
                self.revocations.revoke_node(node);
                self.revoked_by.entry(node).or_default().push(r.id);
            }
            Body::GrantRevoked { issuer, first, last } => self.revocations.revoke_grants(issuer, first, last),
            // A fact about the author, kept in the DAG; nothing else changes.
            Body::ImageProvisioned { .. } => {}
        }
        self.dag.insert(r);
        Ok(())
    }

    /// Takes in one record relayed from a peer. Fails only when the journal cannot be written.
    pub fn ingest(&mut self, bytes: &[u8]) -> Result<IngestOutcome, Refusal> {
        let r = match Record::decode(bytes) {
            Ok(r) => r,
            Err(_) => return Ok(IngestOutcome::Malformed),
        };
        if self.dag.contains(&r.id) {
            return Ok(IngestOutcome::Duplicate);
        }
        if self.pending.records.contains_key(&r.id) {
            return Ok(IngestOutcome::Pending);
        }
        if !self.dag.parents_present(&r) {
            // Check what can be checked now, so the buffer holds no forgery by a known author.
            if let Some(key) = self.author_key(&r.author)
                && !r.signature_ok(&key)
            {
                return Ok(IngestOutcome::BadSignature);
            }
            self.hold(r);
            return Ok(IngestOutcome::Pending);
        }
        let id = r.id;
        match self.accept(r, true) {
            Ok(()) => {
                self.release_waiting(id)?;
                Ok(IngestOutcome::Accepted)
            }
            Err(Reject::Check(outcome)) => Ok(outcome),
            Err(Reject::Storage) => Err(STORAGE),
        }
    }

    fn hold(&mut self, r: Record) {
        if self.pending.records.len() >= MAX_PENDING
            && let Some(old) = self.pending.fifo.pop_front()
        {
            self.pending.records.remove(&old);
            self.pending.dropped += 1;
        }
        for p in &r.parents {
            if !self.dag.contains(p) {
                self.pending.waiting.entry(*p).or_default().push(r.id);
            }
        }
        self.pending.fifo.push_back(r.id);
        self.pending.records.insert(r.id, r);
    }

    /// Accepts every held record whose last missing parent was `id`, transitively.
    fn release_waiting(&mut self, id: RecordId) -> Result<(), Refusal> {
        let mut work = alloc::vec![id];
        while let Some(parent) = work.pop() {
            for child in self.pending.waiting.remove(&parent).unwrap_or_default() {
                let ready = self.pending.records.get(&child).is_some_and(|c| self.dag.parents_present(c));
                if !ready {
                    continue;
                }
                let Some(c) = self.pending.records.remove(&child) else { continue };
                self.pending.fifo.retain(|x| *x != child);
                match self.accept(c, true) {
                    Ok(()) => work.push(child),
                    Err(Reject::Check(_)) => {}
                    Err(Reject::Storage) => return Err(STORAGE),
                }
            }
        }
        // Waiting entries of dropped records are cleaned lazily.
        let records = &self.pending.records;
        self.pending.waiting.retain(|_, kids| {
            kids.retain(|k| records.contains_key(k));
            !kids.is_empty()
        });
        Ok(())
    }

    /// Authors, signs and accepts a record naming the current heads as parents.
    pub fn author(&mut self, body: Body, now_unix_s: u64) -> Result<RecordId, Refusal> {
        self.author_with(body, now_unix_s, true)
    }

    /// Signs a record with no parents. Pairing uses it for the first admission of a new peer, so
    /// that the peer's TCB, which holds none of this node's history yet, can accept it at once
    /// and sign its own admission on top of it. A parentless record is concurrent with every
    /// other: if this node is revoked, it is void like any record that does not precede the
    /// revocation.
    pub fn author_detached(&mut self, body: Body, now_unix_s: u64) -> Result<RecordId, Refusal> {
        self.author_with(body, now_unix_s, false)
    }

    fn author_with(&mut self, body: Body, now_unix_s: u64, on_heads: bool) -> Result<RecordId, Refusal> {
        // With more than MAX_PARENTS heads the parents may not include this node's own
        // revocation; refuse on what this node knows, not only on what the record names.
        if self.revocations.node_revoked(&self.node_id) {
            return Err(refuse(ErrorCode::Rejected, "this node has been revoked"));
        }
        let mut heads: Vec<RecordId> = if on_heads { self.dag.heads().copied().collect() } else { Vec::new() };
        if heads.len() > MAX_PARENTS {
            heads.sort_by_key(|h| core::cmp::Reverse((self.dag.height(h), *h)));
            heads.truncate(MAX_PARENTS);
        }
        let r = Record::sign(self.keys.signing_key(), self.node_id, now_unix_s, &heads, body);
        let id = r.id;
        match self.accept_checked(r, true, true) {
            Ok(()) => Ok(id),
            Err(Reject::Check(IngestOutcome::RevokedAuthor)) => {
                Err(refuse(ErrorCode::Rejected, "this node has been revoked"))
            }
            Err(Reject::Check(IngestOutcome::UnknownAuthor)) => {
                Err(refuse(ErrorCode::Rejected, "this node is not in the fleet root set"))
            }
            Err(Reject::Check(_)) => {
                Err(refuse(ErrorCode::Internal, "a record this node signed failed its own checks"))
            }
            Err(Reject::Storage) => Err(STORAGE),
        }
    }

    /// Issues a capability token for `grantee`.
    pub fn issue(&mut self, g: &IssueGrant, now_unix_s: u64) -> Result<Grant, Refusal> {
        if g.expires_unix_s <= now_unix_s {
            return Err(refuse(ErrorCode::Rejected, "the grant would already be expired"));
        }
        if self.revocations.node_revoked(&g.grantee) {
            return Err(refuse(ErrorCode::Rejected, "the grantee has been revoked"));
        }
        if self.revocations.node_revoked(&self.node_id) {
            return Err(refuse(ErrorCode::Rejected, "this node has been revoked"));
        }
        if self.next_sequence >= self.reserved_sequence {
            let upto = self.next_sequence + SEQUENCE_BLOCK;
            self.journal
                .append(entry::SEQUENCE_RESERVED, &upto.to_le_bytes(), &mut self.scratch)
                .map_err(|_| STORAGE)?;
            self.reserved_sequence = upto;
        }
        let sequence = self.next_sequence;
        self.next_sequence += 1;
        let claims = Claims {
            issuer: self.node_id,
            grantee: g.grantee,
            resource_type: g.resource_type,
            resource_id: g.resource_id,
            expires_unix_s: g.expires_unix_s,
            sequence,
        };
        let t = TokenBytes::issue(&self.token_key, &claims);
        let mut token = Token::new();
        token.extend_from_slice(t.as_bytes()).expect("a token fits TOKEN_MAX");
        Ok(Grant { token, sequence })
    }

    /// Checks a token: tag (constant time), expiry, issuer, grantee, grant. A fixed number of
    /// `O(log n)` lookups, whatever the size of the ledger.
    pub fn verify(&self, token: &[u8], now_unix_s: u64) -> Verdict {
        let Ok(t) = TokenBytes::parse(token) else { return Verdict::Malformed };
        if t.issuer != self.node_id.0.0 || !t.tag_ok(&self.token_key) {
            return Verdict::BadTag;
        }
        self.claims_verdict(&t.claims(), now_unix_s)
    }

    /// The rules after a token's authenticity, in order: expiry (this TCB's clock), issuer,
    /// grantee and grant revoked, else `Valid`.
    fn claims_verdict(&self, c: &Claims, now_unix_s: u64) -> Verdict {
        if c.expires_unix_s <= now_unix_s {
            Verdict::Expired
        } else if self.revocations.node_revoked(&c.issuer) {
            Verdict::IssuerRevoked
        } else if self.revocations.node_revoked(&c.grantee) {
            Verdict::GranteeRevoked
        } else if self.revocations.grant_revoked(&c.issuer, c.sequence) {
            Verdict::GrantRevoked
        } else {
            Verdict::Valid
        }
    }

    /// Endorses a token this node issued: signs `"ppn/endorse/v1" ‖ token` with this node's
    /// Ed25519 key, so that any member (who knows the key from the ledger, but not the grant
    /// key) can check it with [`Ledger::verify_endorsed`]. Only a token [`Ledger::verify`] finds
    /// valid now is endorsed.
    pub fn endorse(&self, token: &[u8], now_unix_s: u64) -> Result<Signature, Refusal> {
        match self.verify(token, now_unix_s) {
            Verdict::Valid => {}
            Verdict::Malformed => return Err(refuse(ErrorCode::Rejected, "not a token")),
            Verdict::BadTag => return Err(refuse(ErrorCode::Rejected, "this node did not issue the token")),
            Verdict::Expired => return Err(refuse(ErrorCode::Rejected, "the token has expired")),
            _ => return Err(refuse(ErrorCode::Rejected, "the token, its issuer or its grantee is revoked")),
        }
        let signature = self.keys.signing_key().sign(&endorsement_message(token));
        Ok(ppn_wire::ByteArray(signature.to_bytes()))
    }

    /// Checks a token another member issued, by its endorsement. The first rule that fails
    /// answers: `Malformed`; `UnknownIssuer` (no key for the issuer in this ledger);
    /// `BadEndorsement` (the signature does not check, strictly, under the issuer's key);
    /// `Expired` (this TCB's clock); `IssuerRevoked`; `UnknownIssuer` again when the issuer's
    /// admission is void ([`Ledger::is_trusted`]); `GranteeRevoked`; `GrantRevoked`; else
    /// `Valid`. It says nothing about who the grantee is: the caller compares it.
    pub fn verify_endorsed(&self, token: &[u8], signature: &Signature, now_unix_s: u64) -> Verdict {
        let Ok(t) = TokenBytes::parse(token) else { return Verdict::Malformed };
        let c = t.claims();
        let Some(key) = self.author_key(&c.issuer) else { return Verdict::UnknownIssuer };
        let sig = ed25519_dalek::Signature::from_bytes(&signature.0);
        if key.verify_strict(&endorsement_message(token), &sig).is_err() {
            return Verdict::BadEndorsement;
        }
        match self.claims_verdict(&c, now_unix_s) {
            v @ (Verdict::Expired | Verdict::IssuerRevoked) => v,
            _ if !self.is_trusted(&c.issuer) => Verdict::UnknownIssuer,
            v => v,
        }
    }

    /// Current heads, up to what a frame carries (highest first when there are more).
    pub fn heads(&self) -> Heads {
        let mut ids: Vec<RecordId> = self.dag.heads().copied().collect();
        if ids.len() > HEADS_MAX {
            ids.sort_by_key(|h| core::cmp::Reverse((self.dag.height(h), *h)));
            ids.truncate(HEADS_MAX);
        }
        Heads { heads: ids.into_iter().collect(), known: self.dag.known_sample(), record_count: self.dag.len() as u64 }
    }

    /// Records a peer with `peer_heads` lacks, parents first.
    pub fn records_lacking(&self, peer_heads: &[RecordId], limit: usize) -> Records {
        let limit = limit.clamp(1, RECORDS_PER_FRAME);
        let (recs, more) = self.dag.lacking(peer_heads, limit);
        let mut records = heapless::Vec::new();
        for r in recs {
            let mut b = WireRecord::new();
            // Cannot fail: MAX_RECORD_LEN <= RECORD_MAX, checked at compile time.
            let _ = b.extend_from_slice(&r.bytes);
            let _ = records.push(b);
        }
        Records { records, more }
    }

    /// A summary for operators.
    pub fn summary(&self) -> LedgerSummary {
        LedgerSummary {
            record_count: self.dag.len() as u64,
            heads: self.dag.head_count() as u32,
            pending: self.pending.records.len() as u32,
            pending_dropped: self.pending.dropped,
            root_count: self.roots.len() as u32,
            admitted_count: self.admitted.len() as u32,
            revoked_node_count: self.revocations.revoked_node_count() as u32,
            revoked_nodes: self.revocations.revoked_nodes().take(REVOKED_NODES_MAX).copied().collect(),
            revoked_grant_ranges: self.revocations.grant_range_count() as u32,
            next_sequence: self.next_sequence,
        }
    }

    /// The fleet root set as public keys.
    /// The fleet's members as this replica sees them: every root and every node named by an
    /// accepted admission, with its keys and whether it is trusted now. A node's WireGuard key
    /// is the one of its newest valid admission (by creation time, then record id), so replicas
    /// with the same records agree; a root with no admission has none. At most
    /// [`MEMBERS_MAX`](ppn_wire::service::MEMBERS_MAX), lowest node ids first.
    pub fn members(&self) -> Members {
        let mut out: BTreeMap<NodeId, Member> = BTreeMap::new();
        for (id, key) in self.roots.keys() {
            out.insert(
                *id,
                Member {
                    node_id: *id,
                    signing_key: ppn_wire::ByteArray(key.to_bytes()),
                    wireguard: None,
                    root: true,
                    trusted: self.is_trusted(id),
                },
            );
        }
        for (id, a) in &self.admitted {
            let wireguard = a
                .wireguard
                .iter()
                .filter(|(_, rid, _)| self.admission_valid(rid, 0))
                .max_by_key(|(created, rid, _)| (*created, *rid))
                .map(|(_, _, k)| ppn_wire::ByteArray(*k));
            let m = out.entry(*id).or_insert(Member {
                node_id: *id,
                signing_key: ppn_wire::ByteArray(a.key.to_bytes()),
                wireguard: None,
                root: false,
                trusted: false,
            });
            m.wireguard = wireguard;
            m.trusted = self.is_trusted(id);
        }
        Members { members: out.into_values().take(MEMBERS_MAX).collect() }
    }

    pub fn root_keys(&self) -> RootSet {
        RootSet { keys: self.roots.keys().take(ROOTS_MAX).map(|(_, k)| ppn_wire::ByteArray(k.to_bytes())).collect() }
    }

    /// Answers a wire request. `now_unix_s` is the TCB's own clock, never the proxy's.
    pub fn handle(&mut self, req: &LedgerRequest, now_unix_s: u64) -> Result<LedgerResponse, Refusal> {
        Ok(match req {
            LedgerRequest::IssueGrant(g) => LedgerResponse::IssueGrant(self.issue(g, now_unix_s)?),
            LedgerRequest::VerifyToken(v) => {
                LedgerResponse::VerifyToken(TokenVerdict { verdict: self.verify(&v.token, now_unix_s) })
            }
            LedgerRequest::Revoke(r) => {
                let body = match r.target {
                    RevokeTarget::Node { node } => Body::NodeRevoked { node },
                    RevokeTarget::Grant { issuer, sequence } => {
                        Body::GrantRevoked { issuer, first: sequence, last: sequence }
                    }
                    RevokeTarget::GrantRange { issuer, first, last } => {
                        if first > last {
                            return Err(refuse(ErrorCode::Rejected, "grant range has first > last"));
                        }
                        Body::GrantRevoked { issuer, first, last }
                    }
                };
                LedgerResponse::Revoke(Revoked { record_id: self.author(body, now_unix_s)? })
            }
            LedgerRequest::IngestRecords(i) => {
                let mut outcomes = heapless::Vec::new();
                for r in &i.records {
                    // Cannot overflow: one outcome per record, same capacity.
                    let _ = outcomes.push(self.ingest(r)?);
                }
                LedgerResponse::IngestRecords(Ingested { outcomes })
            }
            LedgerRequest::Heads => LedgerResponse::Heads(self.heads()),
            LedgerRequest::RecordsLacking(q) => {
                LedgerResponse::RecordsLacking(self.records_lacking(&q.peer_heads, q.limit as usize))
            }
            LedgerRequest::Summary => LedgerResponse::Summary(self.summary()),
            LedgerRequest::Roots => LedgerResponse::Roots(self.root_keys()),
            LedgerRequest::Members => LedgerResponse::Members(self.members()),
            LedgerRequest::Endorse(e) => {
                LedgerResponse::Endorse(Endorsement { signature: self.endorse(&e.token, now_unix_s)? })
            }
            LedgerRequest::VerifyEndorsed(v) => LedgerResponse::VerifyEndorsed(TokenVerdict {
                verdict: self.verify_endorsed(&v.token, &v.signature, now_unix_s),
            }),
        })
    }
}

/// Domain of token endorsements (docs/ledger.md §2a).
const ENDORSE_DOMAIN: &[u8] = b"ppn/endorse/v1";

fn endorsement_message(token: &[u8]) -> Vec<u8> {
    let mut m = Vec::with_capacity(ENDORSE_DOMAIN.len() + token.len());
    m.extend_from_slice(ENDORSE_DOMAIN);
    m.extend_from_slice(token);
    m
}
