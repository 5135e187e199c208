//! Ledger service checks.
//!
//! They change the ledger of the TCB under test: they issue grants to made-up node ids (fresh on
//! every run), revoke those grants and nodes, and so append signed records that stay in its
//! journal. Run them against a test node's TCB, not one whose ledger matters.
//!
//! To check the sync answers independently of the ledger core, this module reads the two fields
//! of a record it needs (the parents, and the id = SHA-256 of the bytes) itself, from the record
//! format of `components/ledger/src/record.rs`.

use crate::{CheckResult, TIMEOUT, err};
use ppn_tcb_client::ClientError;
use ppn_tcb_client::blocking::Client;
use ppn_wire::ByteArray;
use ppn_wire::ErrorCode;
use ppn_wire::service::*;
use sha2::{Digest as _, Sha256};
use std::collections::{BTreeMap, BTreeSet};
use std::path::Path;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{SystemTime, UNIX_EPOCH};

/// Seconds since the Unix epoch by this machine's clock.
pub fn now_unix_s() -> u64 {
    SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0)
}

/// A node id no one has used: from the clock, the process id and a counter.
pub fn fresh_node_id() -> NodeId {
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = SystemTime::now().duration_since(UNIX_EPOCH).map(|d| d.as_nanos() as u64).unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    let mut rng = crate::Rng::new(nanos ^ (u64::from(std::process::id()) << 32) ^ n.wrapping_mul(0x9E37_79B9));
    NodeId(ByteArray(rng.next_u64().to_le_bytes()))
}

/// A record's id: SHA-256 over all its bytes.
pub fn record_id(record: &[u8]) -> Digest {
    ByteArray(Sha256::digest(record).into())
}

/// A record's parents (byte 20 is their count; they follow from byte 21, 32 bytes each), or
/// `None` if the record is too short to hold them.
pub fn record_parents(record: &[u8]) -> Option<Vec<Digest>> {
    let n = *record.get(20)? as usize;
    let bytes = record.get(21..21 + 32 * n)?;
    Some(bytes.chunks_exact(32).map(|c| ByteArray(c.try_into().unwrap_or([0; 32]))).collect())
}

/// The heads of a set of records: those no record in the set names as a parent, ascending.
pub fn heads_of<'a>(records: impl IntoIterator<Item = &'a [u8]>) -> Vec<Digest> {
    let mut ids = BTreeSet::new();
    let mut parents = BTreeSet::new();
    for r in records {
        ids.insert(record_id(r));
        parents.extend(record_parents(r).unwrap_or_default());
    }
    ids.difference(&parents).copied().collect()
}

/// Everything the TCB would send a peer with an empty ledger, fetched the way a syncing proxy
/// does: ask with this side's heads, `limit` records at a time, while the TCB says `more`.
/// Checks on the way that every record arrives after its parents and only once. Returns the
/// records in arrival order and the number of rounds.
pub fn fetch_all(c: &mut Client, limit: u16) -> Result<(Vec<Vec<u8>>, usize), String> {
    let mut have: BTreeMap<Digest, usize> = BTreeMap::new();
    let mut records: Vec<Vec<u8>> = Vec::new();
    let mut rounds = 0;
    loop {
        rounds += 1;
        let mut mine = heads_of(records.iter().map(Vec::as_slice));
        mine.truncate(HEADS_MAX);
        let answer = c.records_lacking(&mine, limit).map_err(err("records_lacking"))?;
        if answer.records.len() > usize::from(limit.max(1)) {
            return Err(format!("asked for at most {limit} records, got {}", answer.records.len()));
        }
        let before = records.len();
        for r in &answer.records {
            let id = record_id(r);
            if have.contains_key(&id) {
                return Err(format!("round {rounds}: record {id:x} sent again although this side's heads cover it"));
            }
            let parents = record_parents(r).ok_or_else(|| format!("record {id:x} is too short to name parents"))?;
            if let Some(p) = parents.iter().find(|p| !have.contains_key(*p)) {
                return Err(format!("round {rounds}: record {id:x} arrived before its parent {p:x}"));
            }
            have.insert(id, records.len());
            records.push(r.to_vec());
        }
        if !answer.more {
            return Ok((records, rounds));
        }
        if records.len() == before {
            return Err(format!("round {rounds}: `more` is set but no record was sent"));
        }
    }
}

fn expect_verdict(c: &mut Client, token: &[u8], want: Verdict, what: &str) -> Result<(), String> {
    let got = c.verify_token(token).map_err(err(what))?;
    if got == want { Ok(()) } else { Err(format!("{what}: verdict {got:?}, want {want:?}")) }
}

/// Grants and revocations: issue a grant, verify it (and refuse altered and malformed tokens),
/// revoke the grant, then the grantee; each revocation shows in the verdict and the summary.
pub fn check_ledger_lifecycle(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let me = c.identity().map_err(err("identity"))?.node_id;
    let before = c.ledger_summary().map_err(err("summary"))?;
    let grantee = fresh_node_id();
    let expires = now_unix_s() + 3600;

    match c.issue_grant(grantee, ResourceType::Vm, 7, now_unix_s().saturating_sub(10)) {
        Err(ClientError::Tcb { code: ErrorCode::Rejected, .. }) => {}
        other => return Err(format!("a grant that expired before it was issued: {other:?}, want Rejected")),
    }
    let g1 = c.issue_grant(grantee, ResourceType::Vm, 7, expires).map_err(err("issue"))?;
    if g1.token.is_empty() || g1.sequence < before.next_sequence {
        return Err(format!(
            "grant: {} token bytes, sequence {} (the summary said the next is {})",
            g1.token.len(),
            g1.sequence,
            before.next_sequence
        ));
    }
    expect_verdict(&mut c, &g1.token, Verdict::Valid, "the issued token")?;

    // One flipped bit per byte: never valid; in the last byte (inside the tag) it is BadTag.
    for i in 0..g1.token.len() {
        let mut t = g1.token.to_vec();
        t[i] ^= 1 << (i % 8);
        let got = c.verify_token(&t).map_err(err("verify altered"))?;
        let last = i == g1.token.len() - 1;
        if (last && got != Verdict::BadTag) || !matches!(got, Verdict::BadTag | Verdict::Malformed) {
            return Err(format!("token with byte {i} altered: verdict {got:?}"));
        }
    }
    let mut longer = g1.token.to_vec();
    longer.push(0);
    for (what, t) in [
        ("an empty token", &[][..]),
        ("a 3-byte token", &[1, 2, 3][..]),
        ("the token without its last byte", &g1.token[..g1.token.len() - 1]),
        ("the token with a byte more", &longer[..]),
    ] {
        if t.len() <= TOKEN_MAX {
            expect_verdict(&mut c, t, Verdict::Malformed, what)?;
        }
    }

    let r1 = c.revoke(RevokeTarget::Grant { issuer: me, sequence: g1.sequence }).map_err(err("revoke grant"))?;
    expect_verdict(&mut c, &g1.token, Verdict::GrantRevoked, "the token after its grant was revoked")?;

    let g2 = c.issue_grant(grantee, ResourceType::Memory, 8, expires).map_err(err("issue again"))?;
    if g2.sequence <= g1.sequence {
        return Err(format!("second grant has sequence {}, the first had {}", g2.sequence, g1.sequence));
    }
    expect_verdict(&mut c, &g2.token, Verdict::Valid, "the second token")?;
    let r2 = c.revoke(RevokeTarget::Node { node: grantee }).map_err(err("revoke node"))?;
    if r2 == r1 {
        return Err("two revocations got the same record id".into());
    }
    expect_verdict(&mut c, &g2.token, Verdict::GranteeRevoked, "the second token after its grantee was revoked")?;
    match c.issue_grant(grantee, ResourceType::Vm, 9, expires) {
        Err(ClientError::Tcb { code: ErrorCode::Rejected, .. }) => {}
        other => return Err(format!("a grant to a revoked node: {other:?}, want Rejected")),
    }

    let after = c.ledger_summary().map_err(err("summary"))?;
    let heads = c.heads().map_err(err("heads"))?;
    let problems = [
        (after.record_count < before.record_count + 2, "fewer than 2 records more"),
        (after.revoked_node_count <= before.revoked_node_count, "no more revoked nodes"),
        (
            after.revoked_node_count as usize <= REVOKED_NODES_MAX && !after.revoked_nodes.contains(&grantee),
            "the grantee is not among the revoked nodes",
        ),
        (after.revoked_grant_ranges == 0, "no revoked grant range"),
        (after.next_sequence <= g2.sequence, "next sequence not past the last grant"),
        (heads.record_count != after.record_count, "heads and summary disagree on the record count"),
        (!heads.heads.contains(&r2), "the last revocation is not a head"),
    ];
    if let Some((_, what)) = problems.iter().find(|(bad, _)| *bad) {
        return Err(format!("summary after 2 revocations: {what}: before {before:?}, after {after:?}"));
    }
    Ok(format!(
        "grants {} and {} to {grantee}: valid, altered and malformed refused, revoked by grant and by node; {} records",
        g1.sequence, g2.sequence, after.record_count
    ))
}

/// Record ingest and sync answers: malformed bytes are Malformed, a record the TCB sent is a
/// Duplicate, an altered one has a bad signature, and what `records_lacking` sends from nothing
/// is exactly the ledger: its heads are the TCB's heads.
pub fn check_ledger_ingest(socket: &Path) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let outcomes = c.ingest_records(&[&b"not a ledger record"[..], &[]]).map_err(err("ingest garbage"))?;
    if outcomes != [IngestOutcome::Malformed, IngestOutcome::Malformed] {
        return Err(format!("ingest of 2 malformed records: {outcomes:?}"));
    }
    let (mut records, mut rounds) = fetch_all(&mut c, 3)?;
    if records.is_empty() {
        // A fresh ledger: give it a record to send.
        c.revoke(RevokeTarget::Node { node: fresh_node_id() }).map_err(err("revoke"))?;
        (records, rounds) = fetch_all(&mut c, 3)?;
    }
    let heads = c.heads().map_err(err("heads"))?;
    if records.len() as u64 != heads.record_count {
        return Err(format!("records_lacking([]) sent {} records, heads counts {}", records.len(), heads.record_count));
    }
    let computed = heads_of(records.iter().map(Vec::as_slice));
    let told: BTreeSet<Digest> = heads.heads.iter().copied().collect();
    if computed.len() <= HEADS_MAX && computed.iter().copied().collect::<BTreeSet<_>>() != told {
        return Err(format!("heads of the records sent {computed:x?} are not the TCB's heads {told:x?}"));
    }
    let rest = c.records_lacking(&heads.heads, RECORDS_PER_FRAME as u16).map_err(err("records_lacking(heads)"))?;
    if !rest.records.is_empty() || rest.more {
        return Err(format!(
            "a peer with the TCB's own heads lacks {} records (more: {})",
            rest.records.len(),
            rest.more
        ));
    }

    let batch: Vec<&[u8]> = records.iter().rev().take(RECORDS_PER_FRAME).map(Vec::as_slice).collect();
    let outcomes = c.ingest_records(&batch).map_err(err("ingest known records"))?;
    if outcomes.len() != batch.len() || outcomes.iter().any(|o| *o != IngestOutcome::Duplicate) {
        return Err(format!("ingest of {} records the TCB sent: {outcomes:?}, want all Duplicate", batch.len()));
    }
    let mut altered = records[0].clone();
    let last = altered.len() - 1;
    altered[last] ^= 0x01; // inside the signature
    let outcomes = c.ingest_records(&[altered]).map_err(err("ingest altered record"))?;
    if outcomes != [IngestOutcome::BadSignature] {
        return Err(format!("a record with an altered signature: {outcomes:?}, want BadSignature"));
    }
    let count = c.heads().map_err(err("heads"))?.record_count;
    if count != heads.record_count {
        return Err(format!("ingesting nothing new changed the record count from {} to {count}", heads.record_count));
    }
    Ok(format!(
        "{} records in {rounds} rounds of 3, heads match; garbage Malformed, known Duplicate, altered BadSignature",
        records.len()
    ))
}

/// Restart and persistence: grants and a revocation made before a restart of the TCB (whatever
/// restarting means for the backend: a SIGKILL and a new `ppn-tcb`, a hard stop and a new boot
/// of the seL4 image) are in force after it; the identity is the same, the boot is counted, and
/// no sequence number is handed out twice. `restart` must return once the TCB answers again.
pub fn check_persistence_across_restart(socket: &Path, restart: &mut dyn FnMut() -> Result<(), String>) -> CheckResult {
    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect"))?;
    let before = c.status().map_err(err("status"))?;
    let grantee = fresh_node_id();
    let expires = now_unix_s() + 3600;
    let revoked = c.issue_grant(grantee, ResourceType::Vm, 1, expires).map_err(err("issue"))?;
    let kept = c.issue_grant(grantee, ResourceType::Image, 2, expires).map_err(err("issue"))?;
    let record =
        c.revoke(RevokeTarget::Grant { issuer: before.node_id, sequence: revoked.sequence }).map_err(err("revoke"))?;
    expect_verdict(&mut c, &revoked.token, Verdict::GrantRevoked, "the revoked grant before the restart")?;
    let summary = c.ledger_summary().map_err(err("summary"))?;
    drop(c);

    restart()?;

    let mut c = Client::connect(socket, TIMEOUT).map_err(err("connect after the restart"))?;
    let after = c.status().map_err(err("status after the restart"))?;
    if after.node_id != before.node_id {
        return Err(format!("the identity changed across the restart: {} -> {}", before.node_id, after.node_id));
    }
    if after.boot_count != before.boot_count + 1 {
        return Err(format!("boot count {} -> {}, want one more", before.boot_count, after.boot_count));
    }
    expect_verdict(&mut c, &revoked.token, Verdict::GrantRevoked, "the revoked grant after the restart")?;
    expect_verdict(&mut c, &kept.token, Verdict::Valid, "the unrevoked grant after the restart")?;
    let summary_after = c.ledger_summary().map_err(err("summary after the restart"))?;
    if summary_after.record_count != summary.record_count {
        return Err(format!(
            "{} records before the restart, {} after",
            summary.record_count, summary_after.record_count
        ));
    }
    let heads = c.heads().map_err(err("heads after the restart"))?;
    if !heads.heads.contains(&record) {
        return Err(format!("the revocation record {record:?} is not a head after the restart"));
    }
    let next = c.issue_grant(grantee, ResourceType::Memory, 3, expires).map_err(err("issue after the restart"))?;
    if next.sequence <= kept.sequence {
        return Err(format!(
            "sequence {} handed out after the restart; {} was issued before",
            next.sequence, kept.sequence
        ));
    }
    Ok(format!(
        "node {} boot {} -> {}: revocation in force, {} records kept, next sequence {}",
        after.node_id, before.boot_count, after.boot_count, summary_after.record_count, next.sequence
    ))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(parents: &[[u8; 32]]) -> Vec<u8> {
        let mut r = vec![0u8; 21];
        r[20] = parents.len() as u8;
        for p in parents {
            r.extend_from_slice(p);
        }
        r.extend_from_slice(&[9; 8 + 64]);
        r
    }

    #[test]
    fn heads_are_the_records_no_record_names_as_parent() {
        let a = record(&[]);
        let b = record(&[record_id(&a).0]);
        let c = record(&[record_id(&a).0, [7; 32]]);
        assert_eq!(record_parents(&c), Some(vec![record_id(&a), ByteArray([7; 32])]));
        let mut want = vec![record_id(&b), record_id(&c)];
        want.sort();
        assert_eq!(heads_of([&a[..], &b[..], &c[..]]), want);
        assert_eq!(heads_of([&a[..]]), [record_id(&a)]);
        assert_eq!(record_parents(&c[..40]), None);
        assert_eq!(record_parents(&[0; 10]), None);
    }

    #[test]
    fn fresh_node_ids_differ() {
        let ids: BTreeSet<NodeId> = (0..100).map(|_| fresh_node_id()).collect();
        assert_eq!(ids.len(), 100);
    }
}
