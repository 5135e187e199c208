//! The ledger service of real `ppn-tcb` processes, through the proxy's async client: grants and
//! revocations across hard kills, two nodes syncing by the proxy's loop, the fleet root set.

use ppn_conformance::HostedTcb;
use ppn_conformance::ledger::{fresh_node_id, now_unix_s};
use ppn_tcb_client::TcbClient;
use ppn_tcb_client::sync::PullStats;
use ppn_wire::service::{Digest, IngestOutcome, NodeId, PublicKey, ResourceType, RevokeTarget, Verdict};
use std::collections::BTreeSet;
use std::path::{Path, PathBuf};

async fn client(t: &HostedTcb) -> TcbClient {
    TcbClient::connect(&t.socket).await.unwrap_or_else(|e| panic!("connect: {e}\n{}", t.log()))
}

async fn pull(into: &TcbClient, from: &TcbClient, limit: u16) -> PullStats {
    let p = ppn_tcb_client::sync::pull_with(into, from, limit).await.expect("pull");
    assert!(p.rounds <= 100, "sync did not finish in 100 rounds: {p:?}");
    p
}

async fn heads_set(c: &TcbClient) -> BTreeSet<Digest> {
    c.heads().await.expect("heads").heads.iter().copied().collect()
}

async fn roots_set(c: &TcbClient) -> BTreeSet<PublicKey> {
    c.ledger_roots().await.expect("roots").into_iter().collect()
}

async fn node_id(c: &TcbClient) -> NodeId {
    c.identity().await.expect("identity").node_id
}

/// Writes a roots file listing `keys`, as `ppn ledger roots` prints them, plus a comment.
fn roots_file(dir: &Path, keys: &[PublicKey]) -> PathBuf {
    let mut text = String::from("# fleet roots for the test\n");
    for k in keys {
        text.push_str(&format!("{k:x}\n"));
    }
    let path = dir.join("roots.txt");
    std::fs::write(&path, text).unwrap();
    path
}

#[tokio::test]
async fn revocations_and_sequence_numbers_survive_hard_kills() {
    let mut tcb = HostedTcb::start();
    let c = client(&tcb).await;
    let me = node_id(&c).await;
    let grantee = fresh_node_id();
    let expires = now_unix_s() + 3600;
    let g1 = c.issue_grant(grantee, ResourceType::Vm, 1, expires).await.unwrap();
    let g2 = c.issue_grant(grantee, ResourceType::Image, 2, expires).await.unwrap();
    assert!(g2.sequence > g1.sequence);
    assert_eq!(c.verify_token(&g1.token).await.unwrap(), Verdict::Valid);
    let record = c.revoke(RevokeTarget::Grant { issuer: me, sequence: g1.sequence }).await.unwrap();
    assert_eq!(c.verify_token(&g1.token).await.unwrap(), Verdict::GrantRevoked);
    assert_eq!(c.verify_token(&g2.token).await.unwrap(), Verdict::Valid);
    let before = c.ledger_summary().await.unwrap();
    assert_eq!((before.record_count, before.revoked_grant_ranges), (1, 1));
    assert_eq!(heads_set(&c).await, BTreeSet::from([record]));
    drop(c);

    let mut issued = vec![g1.sequence, g2.sequence];
    let tokens = (g1.token.clone(), g2.token.clone());
    for boot in 2..=4 {
        tcb.restart(); // SIGKILL, then start again on the same state
        let c = client(&tcb).await;
        assert_eq!(c.status().await.unwrap().boot_count, boot);
        assert_eq!(c.verify_token(&tokens.0).await.unwrap(), Verdict::GrantRevoked, "boot {boot}");
        assert_eq!(c.verify_token(&tokens.1).await.unwrap(), Verdict::Valid, "boot {boot}");
        let s = c.ledger_summary().await.unwrap();
        assert_eq!((s.record_count, s.revoked_grant_ranges, s.pending), (1, 1, 0), "boot {boot}");
        assert_eq!(heads_set(&c).await, BTreeSet::from([record]), "boot {boot}");
        let g = c.issue_grant(grantee, ResourceType::Memory, boot.into(), expires).await.unwrap();
        let highest = *issued.iter().max().unwrap();
        assert!(g.sequence > highest, "boot {boot}: sequence {} after {issued:?}", g.sequence);
        assert!(s.next_sequence <= g.sequence);
        assert_eq!(c.verify_token(&g.token).await.unwrap(), Verdict::Valid);
        issued.push(g.sequence);
    }
    assert!(!tcb.log().contains("ledger journal"), "the ledger journal needed repair:\n{}", tcb.log());
}

#[tokio::test]
async fn two_nodes_sync_revocations_by_the_proxy_loop_and_refuse_a_stranger() {
    let mut a = HostedTcb::start();
    let mut b = HostedTcb::start();
    // Each TCB alone is its own root set.
    let (ka, kb) = {
        let (ca, cb) = (client(&a).await, client(&b).await);
        let (ra, rb) = (ca.ledger_roots().await.unwrap(), cb.ledger_roots().await.unwrap());
        assert_eq!(ra, [ca.public_keys().await.unwrap().signing_key]);
        assert_eq!(rb, [cb.public_keys().await.unwrap().signing_key]);
        (ra[0], rb[0])
    };
    let roots = roots_file(a.dir.path(), &[ka, kb]);
    a.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    b.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    let (ca, cb) = (client(&a).await, client(&b).await);
    assert_eq!(roots_set(&ca).await, BTreeSet::from([ka, kb]));
    assert_eq!(roots_set(&cb).await, BTreeSet::from([ka, kb]));
    assert_eq!(cb.ledger_summary().await.unwrap().root_count, 2);

    // A revokes a node, and enough grant ranges that the sync needs several rounds.
    let x = fresh_node_id();
    ca.revoke(RevokeTarget::Node { node: x }).await.unwrap();
    for i in 0..14 {
        ca.revoke(RevokeTarget::GrantRange { issuer: fresh_node_id(), first: i, last: i + 1 }).await.unwrap();
    }
    let p = pull(&cb, &ca, 5).await;
    assert_eq!(p.outcomes, vec![IngestOutcome::Accepted; 15]);
    assert_eq!(p.rounds, 3, "15 records, 5 a round");
    let (sa, sb) = (ca.ledger_summary().await.unwrap(), cb.ledger_summary().await.unwrap());
    assert_eq!(sb.record_count, 15);
    assert_eq!(sb.revoked_nodes.as_slice(), [x]);
    assert_eq!(sb.revoked_grant_ranges, 14);
    assert_eq!((sb.record_count, sb.revoked_node_count), (sa.record_count, sa.revoked_node_count));
    assert_eq!(heads_set(&cb).await, heads_set(&ca).await);
    // In sync: nothing to send.
    assert_eq!(pull(&cb, &ca, 5).await, PullStats { rounds: 1, outcomes: vec![] });

    // Tokens are checked only by their issuer: B cannot vouch for A's.
    let g = ca.issue_grant(fresh_node_id(), ResourceType::Vm, 3, now_unix_s() + 60).await.unwrap();
    assert_eq!(ca.verify_token(&g.token).await.unwrap(), Verdict::Valid);
    assert_eq!(cb.verify_token(&g.token).await.unwrap(), Verdict::BadTag);

    // Both revoke at once; syncing both ways merges the two branches. Neither knows the other's
    // head, so the known sample in `Heads` is what finds the common history: one round each.
    let (y, z) = (fresh_node_id(), fresh_node_id());
    ca.revoke(RevokeTarget::Node { node: y }).await.unwrap();
    cb.revoke(RevokeTarget::Node { node: z }).await.unwrap();
    let p = pull(&cb, &ca, 5).await;
    assert_eq!(p.outcomes, [IngestOutcome::Accepted], "{p:?}");
    assert_eq!(p.rounds, 1);
    let p = pull(&ca, &cb, 5).await;
    assert_eq!(p.outcomes, [IngestOutcome::Accepted], "{p:?}");
    let heads = heads_set(&ca).await;
    assert_eq!(heads.len(), 2, "two concurrent records are two heads");
    assert_eq!(heads_set(&cb).await, heads);
    for c in [&ca, &cb] {
        let s = c.ledger_summary().await.unwrap();
        assert_eq!(s.record_count, 17);
        assert_eq!(s.revoked_nodes.iter().copied().collect::<BTreeSet<_>>(), BTreeSet::from([x, y, z]));
    }

    // A node outside B's roots: its record is refused, and nothing changes.
    let stranger = HostedTcb::start();
    let cs = client(&stranger).await;
    let w = fresh_node_id();
    cs.revoke(RevokeTarget::Node { node: w }).await.unwrap();
    let from_stranger = cs.records_lacking(&[], 12).await.unwrap();
    assert_eq!(from_stranger.records.len(), 1);
    assert_eq!(cb.ingest_records(&from_stranger.records).await.unwrap(), [IngestOutcome::UnknownAuthor]);
    let sb = cb.ledger_summary().await.unwrap();
    assert_eq!(sb.record_count, 17);
    assert!(!sb.revoked_nodes.contains(&w));
    assert_eq!(heads_set(&cb).await, heads);
    // The stranger is no root of A either; its TCB takes A's records only as far as its own roots allow.
    let p = pull(&cs, &ca, 12).await;
    assert!(!p.outcomes.is_empty());
    assert!(p.outcomes.iter().all(|o| matches!(o, IngestOutcome::UnknownAuthor | IngestOutcome::Pending)), "{p:?}");
    assert_eq!(cs.ledger_summary().await.unwrap().record_count, 1);
}

#[tokio::test]
async fn a_journal_entry_that_no_longer_passes_is_skipped_and_reported() {
    let mut a = HostedTcb::start();
    let mut b = HostedTcb::start();
    let (ka, kb) =
        (client(&a).await.ledger_roots().await.unwrap()[0], client(&b).await.ledger_roots().await.unwrap()[0]);
    let roots = roots_file(b.dir.path(), &[ka, kb]);
    a.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    b.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    let (ca, cb) = (client(&a).await, client(&b).await);
    let x = fresh_node_id();
    ca.revoke(RevokeTarget::Node { node: x }).await.unwrap();
    ca.revoke(RevokeTarget::GrantRange { issuer: x, first: 0, last: 9 }).await.unwrap();
    assert_eq!(pull(&cb, &ca, 12).await.outcomes, [IngestOutcome::Accepted; 2]);
    drop(cb);

    // B without --roots no longer trusts A: A's records stay in B's journal but do not count.
    b.restart_with::<&str>(&[]);
    let cb = client(&b).await;
    let s = cb.ledger_summary().await.unwrap();
    assert_eq!((s.record_count, s.revoked_node_count, s.root_count), (0, 0, 1));
    assert!(b.log().contains("ledger journal: 2 entries no longer pass the ledger's checks"), "{}", b.log());
    // With the roots back, they count again.
    drop(cb);
    b.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    let s = client(&b).await.ledger_summary().await.unwrap();
    assert_eq!((s.record_count, s.revoked_node_count, s.root_count), (2, 1, 2));
    assert!(!b.log().contains("ledger journal"), "{}", b.log());
}

/// A node whose own record builds on a record it no longer trusts after a restart (its
/// `--roots` shrank) still starts, and never holds or sends a record without its parents.
/// (Found while building this test: `Ledger::open` used to accept such a child, a panic in a
/// debug build; `components/ledger` fixed it in ae8a79b.)
#[tokio::test]
async fn a_node_whose_own_records_build_on_records_it_no_longer_trusts_still_starts() {
    let mut a = HostedTcb::start();
    let mut b = HostedTcb::start();
    let (ka, kb) =
        (client(&a).await.ledger_roots().await.unwrap()[0], client(&b).await.ledger_roots().await.unwrap()[0]);
    let roots = roots_file(b.dir.path(), &[ka, kb]);
    a.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    b.restart_with(&["--roots".as_ref(), roots.as_os_str()]);
    let (ca, cb) = (client(&a).await, client(&b).await);
    ca.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap();
    assert_eq!(pull(&cb, &ca, 12).await.outcomes, [IngestOutcome::Accepted]);
    cb.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap(); // a child of A's record
    drop(cb);

    b.restart_with::<&str>(&[]);
    assert!(b.is_running(), "ppn-tcb died at start:\n{}", b.log());
    assert!(b.log().contains("ledger journal: 2 entries no longer pass"), "{}", b.log());
    // Whatever B keeps, it sends every record after its parents (`fetch_all` checks that).
    let mut c = ppn_tcb_client::blocking::Client::connect(&b.socket, ppn_conformance::TIMEOUT).unwrap();
    let (records, _) = ppn_conformance::ledger::fetch_all(&mut c, 12).unwrap_or_else(|e| panic!("{e}\n{}", b.log()));
    assert_eq!(records.len() as u64, c.heads().unwrap().record_count);
    assert!(records.is_empty(), "B kept {} records whose parent it skipped", records.len());
    // And it can still author: its next record starts a new root of the DAG.
    drop(c);
    let cb = client(&b).await;
    let id = cb.revoke(RevokeTarget::Node { node: fresh_node_id() }).await.unwrap();
    assert_eq!(heads_set(&cb).await, BTreeSet::from([id]));
}

#[test]
fn a_bad_roots_file_stops_ppn_tcb_and_names_the_line() {
    let dir = tempfile::tempdir().unwrap();
    let roots = dir.path().join("roots.txt");
    // The Ed25519 base point: a valid key.
    let good = format!("58{}", "66".repeat(31));
    std::fs::write(&roots, format!("# roots\n\n{good}  # a comment\nnot-a-key\n")).unwrap();
    let run = |roots: &Path| {
        std::process::Command::new(ppn_conformance::locate_bin("ppn-tcb"))
            .arg("--state")
            .arg(dir.path().join("state"))
            .arg("--socket")
            .arg(dir.path().join("tcb.sock"))
            .arg("--roots")
            .arg(roots)
            .output()
            .unwrap()
    };
    let out = run(&roots);
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains(&format!("roots file {} line 4: expected 64 hex digits", roots.display())), "{err}");
    assert!(!dir.path().join("tcb.sock").exists(), "it served despite the bad roots file");

    let out = run(&dir.path().join("missing.txt"));
    let err = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{err}");
    assert!(err.contains("missing.txt"), "{err}");
}
