//! The ledger through its public API: tokens, acceptance rules, sync, persistence.

use ppn_journal::mem::MemStorage;
use ppn_ledger::{Body, Ledger, Record, Roots};
use ppn_node_core::NodeKeys;
use ppn_wire::ByteArray;
use ppn_wire::service::{IngestOutcome, IssueGrant, NodeId, ResourceType, Verdict};
use std::sync::Arc;

const NOW: u64 = 1_700_000_000;

fn keys(n: u8) -> NodeKeys {
    NodeKeys::from_seed(&[n; 32])
}

fn roots(of: &[u8]) -> Arc<Roots> {
    let mut r = Roots::default();
    for n in of {
        assert!(r.add(&keys(*n).signing_public()));
    }
    Arc::new(r)
}

fn ledger(n: u8, roots: &Arc<Roots>) -> Ledger<MemStorage> {
    Ledger::open(keys(n), Arc::clone(roots), MemStorage::default()).unwrap().0
}

fn grant(l: &mut Ledger<MemStorage>, grantee: NodeId) -> (Vec<u8>, u64) {
    let g = l
        .issue(&IssueGrant { grantee, resource_type: ResourceType::Vm, resource_id: 7, expires_unix_s: NOW + 60 }, NOW)
        .unwrap();
    (g.token.to_vec(), g.sequence)
}

fn other() -> NodeId {
    NodeId(ByteArray([0xEE; 8]))
}

#[test]
fn token_lifecycle_every_verdict() {
    let r = roots(&[1]);
    let mut l = ledger(1, &r);
    let (t, seq) = grant(&mut l, other());
    assert!(t.len() <= 64);
    assert_eq!(l.verify(&t, NOW), Verdict::Valid);
    assert_eq!(l.verify(&t, NOW + 60), Verdict::Expired);
    assert_eq!(l.verify(&t[..59], NOW), Verdict::Malformed);
    let mut bad = t.clone();
    bad[50] ^= 1;
    assert_eq!(l.verify(&bad, NOW), Verdict::BadTag);
    // Another node's token (another grant key) is not ours to accept.
    let mut l2 = ledger(2, &roots(&[2]));
    let (t2, _) = grant(&mut l2, other());
    assert_eq!(l.verify(&t2, NOW), Verdict::BadTag);

    l.author(Body::GrantRevoked { issuer: l.node_id(), first: seq, last: seq }, NOW).unwrap();
    assert_eq!(l.verify(&t, NOW), Verdict::GrantRevoked);
    let (t3, seq3) = grant(&mut l, other());
    assert!(seq3 > seq);
    assert_eq!(l.verify(&t3, NOW), Verdict::Valid);
    l.author(Body::NodeRevoked { node: other() }, NOW).unwrap();
    assert_eq!(l.verify(&t3, NOW), Verdict::GranteeRevoked);
    assert!(
        l.issue(
            &IssueGrant { grantee: other(), resource_type: ResourceType::Vm, resource_id: 1, expires_unix_s: NOW + 9 },
            NOW
        )
        .is_err()
    );

    let (t4, _) = grant(&mut l, NodeId(ByteArray([0xAB; 8])));
    l.author(Body::NodeRevoked { node: l.node_id() }, NOW).unwrap();
    assert_eq!(l.verify(&t4, NOW), Verdict::IssuerRevoked);
    // A revoked node can neither issue nor author.
    assert!(
        l.issue(
            &IssueGrant {
                grantee: NodeId(ByteArray([1; 8])),
                resource_type: ResourceType::Vm,
                resource_id: 1,
                expires_unix_s: NOW + 9
            },
            NOW
        )
        .is_err()
    );
    let refusal = l.author(Body::NodeRevoked { node: other() }, NOW).unwrap_err();
    assert_eq!(refusal.detail, "this node has been revoked");
}

#[test]
fn acceptance_rules_unknown_revoked_pending() {
    let r = roots(&[1, 2]);
    let mut a = ledger(1, &r);
    let mut b = ledger(2, &r);
    // An outsider's record is refused.
    let outsider =
        Record::sign(keys(9).signing_key(), keys(9).node_id(), NOW, &[], Body::NodeRevoked { node: other() });
    assert_eq!(a.ingest(&outsider.bytes).unwrap(), IngestOutcome::UnknownAuthor);
    // A forged signature by a known author is refused.
    let mut forged =
        Record::sign(keys(9).signing_key(), keys(2).node_id(), NOW, &[], Body::NodeRevoked { node: other() });
    assert_eq!(a.ingest(&forged.bytes).unwrap(), IngestOutcome::BadSignature);
    forged.bytes[0] = b'X';
    assert_eq!(a.ingest(&forged.bytes).unwrap(), IngestOutcome::Malformed);

    // B's earlier record, then A revokes B, then B authors again naming the revocation.
    let early = b.author(Body::GrantRevoked { issuer: other(), first: 1, last: 1 }, NOW).unwrap();
    let early_rec = b.dag().get(&early).unwrap().bytes.clone();
    assert_eq!(a.ingest(&early_rec).unwrap(), IngestOutcome::Accepted);
    assert_eq!(a.ingest(&early_rec).unwrap(), IngestOutcome::Duplicate);
    let rev = a.author(Body::NodeRevoked { node: b.node_id() }, NOW).unwrap();
    let rev_rec = a.dag().get(&rev).unwrap().bytes.clone();
    assert_eq!(b.ingest(&rev_rec).unwrap(), IngestOutcome::Accepted);
    assert!(b.author(Body::GrantRevoked { issuer: other(), first: 2, last: 2 }, NOW).is_err());
    let late = Record::sign(keys(2).signing_key(), b.node_id(), NOW, &[rev], Body::NodeRevoked { node: a.node_id() });
    assert_eq!(a.ingest(&late.bytes).unwrap(), IngestOutcome::RevokedAuthor);
    assert!(a.revocations().grant_revoked(&other(), 1), "the revoked author's earlier record stays in force");
    assert!(!a.revocations().node_revoked(&a.node_id()));

    // A child before its parent waits, then both land.
    let mut c = ledger(1, &r);
    assert_eq!(c.ingest(&rev_rec).unwrap(), IngestOutcome::Pending);
    assert_eq!(c.pending_len(), 1);
    assert_eq!(c.ingest(&early_rec).unwrap(), IngestOutcome::Accepted);
    assert_eq!(c.pending_len(), 0);
    assert!(c.dag().contains(&rev));
    assert!(c.revocations().node_revoked(&b.node_id()));
}

#[test]
fn admitted_nodes_may_author_only_below_their_admission() {
    let r = roots(&[1]);
    let mut a = ledger(1, &r);
    let newcomer = keys(5);
    let mut n = Ledger::open(keys(5), Arc::clone(&r), MemStorage::default()).unwrap().0;
    // Before admission, the newcomer's record is from an unknown author.
    let premature =
        Record::sign(newcomer.signing_key(), newcomer.node_id(), NOW, &[], Body::NodeRevoked { node: other() });
    assert_eq!(a.ingest(&premature.bytes).unwrap(), IngestOutcome::UnknownAuthor);
    let adm = a.author(Body::NodeAdmitted { key: newcomer.signing_public(), wireguard: [0x77; 32] }, NOW).unwrap();
    // Still refused: its ancestors do not include the admission.
    assert_eq!(a.ingest(&premature.bytes).unwrap(), IngestOutcome::UnknownAuthor);
    assert!(a.is_trusted(&newcomer.node_id()));
    // The newcomer learns of its admission, then its records are accepted everywhere.
    assert_eq!(n.ingest(&a.dag().get(&adm).unwrap().bytes).unwrap(), IngestOutcome::Accepted);
    let id = n.author(Body::NodeRevoked { node: other() }, NOW).unwrap();
    assert_eq!(a.ingest(&n.dag().get(&id).unwrap().bytes).unwrap(), IngestOutcome::Accepted);
    assert!(a.revocations().node_revoked(&other()));
}

#[test]
fn sync_sends_exactly_the_difference_parents_first() {
    let r = roots(&[1, 2]);
    let mut a = ledger(1, &r);
    let mut b = ledger(2, &r);
    for i in 0..300 {
        let id = a.author(Body::GrantRevoked { issuer: other(), first: i, last: i }, NOW).unwrap();
        assert_eq!(b.ingest(&a.dag().get(&id).unwrap().bytes).unwrap(), IngestOutcome::Accepted);
    }
    for i in 0..5 {
        a.author(Body::GrantRevoked { issuer: other(), first: 1000 + i, last: 1000 + i }, NOW).unwrap();
    }
    let b_heads: Vec<_> = b.heads().heads.to_vec();
    let lack = a.records_lacking(&b_heads, 12);
    assert_eq!(lack.records.len(), 5);
    assert!(!lack.more);
    let small = a.records_lacking(&b_heads, 2);
    assert_eq!(small.records.len(), 2);
    assert!(small.more);
    // Parents first: ingesting in the given order never leaves anything pending.
    for rec in &lack.records {
        assert_eq!(b.ingest(rec).unwrap(), IngestOutcome::Accepted);
    }
    assert_eq!(a.heads(), b.heads());
    assert!(a.records_lacking(&b.heads().heads, 12).records.is_empty());
    // Unknown peer heads are ignored: everything is lacking from an empty peer's view.
    let fresh = a.records_lacking(&[ByteArray([7; 32])], 12);
    assert_eq!(fresh.records.len(), 12);
    assert!(fresh.more);
}

#[test]
fn pending_buffer_is_bounded_and_drops_the_oldest() {
    let r = roots(&[1]);
    let mut a = ledger(1, &r);
    let k = keys(1);
    for i in 0..(ppn_ledger::ledger::MAX_PENDING as u64 + 10) {
        let mut parent = [0u8; 32];
        parent[..8].copy_from_slice(&i.to_le_bytes());
        let rec =
            Record::sign(k.signing_key(), k.node_id(), NOW, &[ByteArray(parent)], Body::NodeRevoked { node: other() });
        assert_eq!(a.ingest(&rec.bytes).unwrap(), IngestOutcome::Pending);
    }
    assert_eq!(a.pending_len(), ppn_ledger::ledger::MAX_PENDING);
    assert_eq!(a.summary().pending_dropped, 10);
}

#[test]
fn reopen_replays_everything_and_never_reuses_a_sequence() {
    let r = roots(&[1]);
    let mut l = ledger(1, &r);
    let (t, seq) = grant(&mut l, other());
    l.author(Body::GrantRevoked { issuer: l.node_id(), first: seq, last: seq }, NOW).unwrap();
    let heads = l.heads();
    let storage = l.journal_storage().clone();
    let (l2, report) = Ledger::open(keys(1), Arc::clone(&r), storage).unwrap();
    assert_eq!(report.records, 1);
    assert_eq!((report.rejected, report.truncated_bytes), (0, 0));
    assert_eq!(l2.heads(), heads);
    assert_eq!(l2.verify(&t, NOW), Verdict::GrantRevoked);
    let mut l2 = l2;
    let (_, seq2) = grant(&mut l2, other());
    assert!(seq2 > seq, "sequence {seq2} reused after reopen (was {seq})");
}

/// Acknowledged = the call returned. A crash leaves any prefix of the journal; every record
/// whose call returned before the cut point survives it, and nothing else appears.
#[test]
fn truncation_at_every_byte_keeps_every_acknowledged_record() {
    let r = roots(&[1]);
    let mut l = ledger(1, &r);
    let mut acked = Vec::new(); // (journal length after the call, record id)
    for i in 0..6u64 {
        let id = l.author(Body::GrantRevoked { issuer: other(), first: i * 10, last: i * 10 + 3 }, NOW).unwrap();
        acked.push((l.journal_storage().bytes.len(), id));
    }
    let full = l.journal_storage().bytes.clone();
    for cut in 0..=full.len() {
        let storage = MemStorage { bytes: full[..cut].to_vec() };
        let (l2, report) = Ledger::open(keys(1), Arc::clone(&r), storage).unwrap();
        let survived: Vec<_> = acked.iter().filter(|(len, _)| *len <= cut).map(|(_, id)| *id).collect();
        assert_eq!(l2.dag().len(), survived.len(), "cut at {cut}");
        for id in &survived {
            assert!(l2.dag().contains(id), "cut at {cut} lost an acknowledged record");
        }
        assert_eq!(report.rejected, 0);
        let kept = l2.journal_storage().bytes.len();
        assert_eq!(report.truncated_bytes as usize, cut - kept);
    }
}

#[test]
fn a_revoked_node_cannot_admit_new_nodes_by_signing_with_old_parents() {
    let r = roots(&[1, 2]);
    let mut a = ledger(1, &r);
    let mut b = ledger(2, &r);
    // Before its revocation, B admits K1: that admission stays valid.
    let k1 = keys(11);
    let adm1 = b.author(Body::NodeAdmitted { key: k1.signing_public(), wireguard: [0x77; 32] }, NOW).unwrap();
    let adm1_bytes = b.dag().get(&adm1).unwrap().bytes.clone();
    assert_eq!(a.ingest(&adm1_bytes).unwrap(), IngestOutcome::Accepted);
    let rev = a.author(Body::NodeRevoked { node: b.node_id() }, NOW).unwrap();
    // B, not having seen its revocation, admits K2 naming old parents: concurrent with it.
    let k2 = keys(12);
    let adm2 = b.author(Body::NodeAdmitted { key: k2.signing_public(), wireguard: [0x77; 32] }, NOW).unwrap();
    let adm2_bytes = b.dag().get(&adm2).unwrap().bytes.clone();
    assert_eq!(a.ingest(&adm2_bytes).unwrap(), IngestOutcome::Accepted, "concurrent records are accepted");
    assert!(a.is_trusted(&k1.node_id()), "an admission made before the revocation stays valid");
    assert!(!a.is_trusted(&k2.node_id()), "an admission concurrent with the author's revocation is void");
    assert!(!a.is_trusted(&b.node_id()));
    // K2's own admissions are void in turn, however they are ordered.
    let mut k2l = Ledger::open(keys(12), Arc::clone(&r), MemStorage::default()).unwrap().0;
    assert_eq!(k2l.ingest(&adm1_bytes).unwrap(), IngestOutcome::Accepted);
    assert_eq!(k2l.ingest(&adm2_bytes).unwrap(), IngestOutcome::Accepted);
    let adm3 = k2l.author(Body::NodeAdmitted { key: keys(13).signing_public(), wireguard: [0x77; 32] }, NOW).unwrap();
    assert_eq!(a.ingest(&k2l.dag().get(&adm3).unwrap().bytes).unwrap(), IngestOutcome::Accepted);
    assert!(!a.is_trusted(&keys(13).node_id()));
    // The replica that learns of the revocation last agrees.
    let mut c = ledger(1, &r);
    for id in [adm1, adm2, adm3, rev] {
        let bytes = a.dag().get(&id).unwrap().bytes.clone();
        c.ingest(&bytes).unwrap();
    }
    assert_eq!(c.pending_len(), 0);
    for n in [&k1, &k2, &keys(13)] {
        assert_eq!(c.is_trusted(&n.node_id()), a.is_trusted(&n.node_id()));
    }
}

#[test]
fn a_tampered_journal_cannot_break_the_dag_on_reopen() {
    let r = roots(&[1]);
    let mut l = ledger(1, &r);
    let a = l.author(Body::NodeRevoked { node: other() }, NOW).unwrap();
    let b = l.author(Body::GrantRevoked { issuer: other(), first: 1, last: 2 }, NOW).unwrap();
    let entry = |id| {
        let mut out = vec![0u8; 1024];
        let bytes = l.dag().get(&id).unwrap().bytes.clone();
        let n = ppn_journal::encode_record(ppn_ledger::ledger::entry::RECORD, &bytes, &mut out).unwrap();
        out.truncate(n);
        out
    };
    // The child before its parent, then the parent twice.
    let mut forged = entry(b);
    forged.extend(entry(a));
    forged.extend(entry(a));
    let (l2, report) = Ledger::open(keys(1), Arc::clone(&r), MemStorage { bytes: forged }).unwrap();
    assert_eq!(report.records, 1);
    assert_eq!(report.rejected, 2);
    assert_eq!(l2.dag().len(), 1);
    assert_eq!(l2.dag().heads().copied().collect::<Vec<_>>(), vec![a]);
}

#[test]
fn a_node_that_knows_it_is_revoked_authors_nothing_even_with_many_heads() {
    let r = roots(&[1, 2]);
    let mut a = ledger(1, &r);
    let mut b = ledger(2, &r);
    // 17 concurrent heads at A from B's side, then A's own revocation by B.
    let base = b.author(Body::NodeRevoked { node: other() }, NOW).unwrap();
    let base_bytes = b.dag().get(&base).unwrap().bytes.clone();
    a.ingest(&base_bytes).unwrap();
    let k = keys(2);
    for i in 0..17u64 {
        let rec = Record::sign(
            k.signing_key(),
            k.node_id(),
            NOW + i,
            &[base],
            Body::GrantRevoked { issuer: other(), first: i, last: i },
        );
        assert_eq!(a.ingest(&rec.bytes).unwrap(), IngestOutcome::Accepted);
    }
    let rev = Record::sign(k.signing_key(), k.node_id(), NOW, &[base], Body::NodeRevoked { node: a.node_id() });
    assert_eq!(a.ingest(&rev.bytes).unwrap(), IngestOutcome::Accepted);
    assert!(a.dag().head_count() > ppn_ledger::record::MAX_PARENTS);
    let refusal = a.author(Body::NodeRevoked { node: b.node_id() }, NOW).unwrap_err();
    assert_eq!(refusal.detail, "this node has been revoked");
}

#[test]
fn members_list_roots_and_admitted_nodes_with_their_mesh_keys_and_trust() {
    let r = roots(&[1, 2]);
    let mut a = ledger(1, &r);
    let m = a.members();
    assert_eq!(m.members.len(), 2);
    assert!(m.members.iter().all(|m| m.root && m.trusted && m.wireguard.is_none()));
    assert!(m.members.windows(2).all(|w| w[0].node_id < w[1].node_id), "ascending node ids");

    // Node 5 admitted with one mesh key, then re-admitted later (a re-pairing) with another:
    // the newest valid admission names the key.
    let k5 = keys(5);
    a.author(Body::NodeAdmitted { key: k5.signing_public(), wireguard: [0x51; 32] }, NOW).unwrap();
    a.author(Body::NodeAdmitted { key: k5.signing_public(), wireguard: [0x52; 32] }, NOW + 10).unwrap();
    // Node 2 (a root) admitted too: it keeps `root` and gains a mesh key.
    a.author(Body::NodeAdmitted { key: keys(2).signing_public(), wireguard: [0x22; 32] }, NOW).unwrap();
    let find = |l: &Ledger<MemStorage>, id: NodeId| l.members().members.into_iter().find(|m| m.node_id == id).unwrap();
    let m5 = find(&a, k5.node_id());
    assert_eq!((m5.root, m5.trusted, m5.wireguard), (false, true, Some(ByteArray([0x52; 32]))));
    assert_eq!(m5.signing_key, ByteArray(k5.signing_public()));
    let m2 = find(&a, keys(2).node_id());
    assert_eq!((m2.root, m2.trusted, m2.wireguard), (true, true, Some(ByteArray([0x22; 32]))));

    // Revoked: still listed, no longer trusted.
    a.author(Body::NodeRevoked { node: k5.node_id() }, NOW).unwrap();
    assert!(!find(&a, k5.node_id()).trusted);

    // Another replica with the same records, delivered in another order, lists the same.
    let mut b = ledger(2, &r);
    let mut records: Vec<Vec<u8>> = a.dag().iter().map(|r| r.bytes.clone()).collect();
    records.reverse();
    for _ in 0..records.len() {
        for rec in &records {
            b.ingest(rec).unwrap();
        }
    }
    assert_eq!(b.members(), a.members());
}

#[test]
fn a_root_added_by_pairing_is_journaled_and_survives_a_reopen() {
    let r = roots(&[1]);
    let mut a = ledger(1, &r);
    let peer = keys(8);
    // Before: the peer's records are from an unknown author.
    let rec = Record::sign(peer.signing_key(), peer.node_id(), NOW, &[], Body::NodeRevoked { node: other() });
    assert_eq!(a.ingest(&rec.bytes).unwrap(), IngestOutcome::UnknownAuthor);
    assert!(a.add_root(&peer.signing_public()).unwrap());
    assert!(!a.add_root(&peer.signing_public()).unwrap(), "already a root");
    let not_a_point = (0u8..=255).map(|i| [i; 32]).find(|k| !Roots::default().add(k)).unwrap();
    assert!(a.add_root(&not_a_point).is_err(), "not a point");
    assert_eq!(a.ingest(&rec.bytes).unwrap(), IngestOutcome::Accepted);
    let bytes = a.journal_storage().bytes.clone();
    let (b, report) = Ledger::open(keys(1), Arc::clone(&r), MemStorage { bytes }).unwrap();
    assert_eq!((report.records, report.rejected), (1, 0), "the root is back before the record it admits");
    assert!(b.roots().get(&peer.node_id()).is_some() && b.is_trusted(&peer.node_id()));
    assert!(b.revocations().node_revoked(&other()));
}

#[test]
fn endorsed_tokens_every_verdict() {
    let r = roots(&[1, 2, 4]);
    let mut issuer = ledger(1, &r);
    let mut checker = ledger(2, &r);
    let share = |from: &mut Ledger<MemStorage>, body: Body, to: &mut Ledger<MemStorage>| {
        let id = from.author(body, NOW).unwrap();
        assert_eq!(to.ingest(&from.dag().get(&id).unwrap().bytes).unwrap(), IngestOutcome::Accepted);
    };
    let grantee = keys(4).node_id();
    let (t, seq) = grant(&mut issuer, grantee);
    let sig = issuer.endorse(&t, NOW).unwrap();
    assert_eq!(checker.verify_endorsed(&t, &sig, NOW), Verdict::Valid);
    // The issuer's own check agrees; the grant key stays the issuer's.
    assert_eq!(issuer.verify_endorsed(&t, &sig, NOW), Verdict::Valid);
    assert_eq!(checker.verify(&t, NOW), Verdict::BadTag);

    assert_eq!(checker.verify_endorsed(&t[..59], &sig, NOW), Verdict::Malformed);
    let mut bad_sig = sig;
    bad_sig.0[3] ^= 1;
    assert_eq!(checker.verify_endorsed(&t, &bad_sig, NOW), Verdict::BadEndorsement);
    // A claim changed after endorsement (a longer expiry): the signature no longer covers it.
    let mut stretched = t.clone();
    stretched[28] ^= 0x10;
    assert_eq!(checker.verify_endorsed(&stretched, &sig, NOW), Verdict::BadEndorsement);
    assert_eq!(checker.verify_endorsed(&t, &sig, NOW + 60), Verdict::Expired);
    // An issuer this ledger has no key for.
    let mut stranger = ledger(3, &roots(&[3]));
    let (t3, _) = grant(&mut stranger, grantee);
    let sig3 = stranger.endorse(&t3, NOW).unwrap();
    assert_eq!(checker.verify_endorsed(&t3, &sig3, NOW), Verdict::UnknownIssuer);

    // Endorse refuses what the issuer itself would not accept.
    assert_eq!(issuer.endorse(&t3, NOW).unwrap_err().detail, "this node did not issue the token");
    assert_eq!(issuer.endorse(&t, NOW + 60).unwrap_err().detail, "the token has expired");
    assert_eq!(issuer.endorse(&t[..10], NOW).unwrap_err().detail, "not a token");

    // Revocations reach the checker as records.
    share(&mut issuer, Body::GrantRevoked { issuer: keys(1).node_id(), first: seq, last: seq }, &mut checker);
    assert_eq!(checker.verify_endorsed(&t, &sig, NOW), Verdict::GrantRevoked);
    assert!(issuer.endorse(&t, NOW).is_err());
    let (t5, _) = grant(&mut issuer, grantee);
    let sig5 = issuer.endorse(&t5, NOW).unwrap();
    assert_eq!(checker.verify_endorsed(&t5, &sig5, NOW), Verdict::Valid);
    share(&mut checker, Body::NodeRevoked { node: grantee }, &mut issuer);
    assert_eq!(checker.verify_endorsed(&t5, &sig5, NOW), Verdict::GranteeRevoked);
    share(&mut checker, Body::NodeRevoked { node: keys(1).node_id() }, &mut issuer);
    assert_eq!(checker.verify_endorsed(&t5, &sig5, NOW), Verdict::IssuerRevoked);
}
