//! `ppn ledger show|roots|members|trust|provisioned|sync`: what the node's capability ledger
//! holds, and pulling records from another node's TCB.

use crate::{Conn, print_json};
use ppn_wire::service::{Heads, LedgerSummary};
use std::fmt::Write as _;
use std::path::Path;
use std::process::ExitCode;

#[derive(Debug, clap::Subcommand)]
pub enum Command {
    /// Record count, heads, pending records, roots, revoked nodes and grants, next sequence.
    Show {
        #[command(flatten)]
        conn: Conn,
    },
    /// The fleet root set, one hex Ed25519 public key per line: the format `ppn-tcb --roots`
    /// reads, so `ppn ledger roots > roots.txt` exports it.
    Roots {
        #[command(flatten)]
        conn: Conn,
    },
    /// The fleet's members as this TCB's ledger sees them: roots and admitted nodes, their
    /// signing keys, their proxies' mesh (WireGuard) keys in WireGuard's base64 form, and
    /// whether each is trusted now.
    Members {
        #[command(flatten)]
        conn: Conn,
    },
    /// The fleet's trust as this TCB's ledger sees it, in the format `ppn verify --roots` reads
    /// (docs/attestation.md): every member's node id, signing key, and `trusted` or `revoked`
    /// (not trusted now). `ppn ledger trust > fleet.trust` exports it for an auditor.
    Trust {
        #[command(flatten)]
        conn: Conn,
    },
    /// The sealed images the fleet's nodes provisioned, as this TCB's ledger holds them: one
    /// `ImageProvisioned` record per provisioning statement (docs/attestation.md), with its
    /// author, time, dm-verity root hash and the statement's SHA-256 (`sha256sum IMAGE.prov`).
    Provisioned {
        #[command(flatten)]
        conn: Conn,
    },
    /// Pull into this TCB every record of another TCB that it accepts (what the mesh's
    /// anti-entropy does; here by hand, between two sockets on this machine).
    Sync {
        #[command(flatten)]
        conn: Conn,
        /// The TCB to pull from.
        #[arg(long)]
        from: std::path::PathBuf,
    },
}

pub async fn run(command: Command) -> Result<ExitCode, String> {
    match command {
        Command::Show { conn } => show(&conn).await,
        Command::Roots { conn } => roots(&conn).await,
        Command::Members { conn } => members(&conn).await,
        Command::Trust { conn } => trust(&conn).await,
        Command::Provisioned { conn } => provisioned(&conn).await,
        Command::Sync { conn, from } => sync(&conn, &from).await,
    }
    .map(|()| ExitCode::SUCCESS)
}

async fn sync(conn: &Conn, from: &Path) -> Result<(), String> {
    let into = conn.connect().await?;
    let source = ppn_tcb_client::TcbClient::connect(from).await.map_err(|e| crate::at(from, e))?;
    let p = ppn_tcb_client::sync::pull(&into, &source).await.map_err(conn.context())?;
    let count = |o: ppn_wire::service::IngestOutcome| p.outcomes.iter().filter(|x| **x == o).count();
    use ppn_wire::service::IngestOutcome as O;
    let (accepted, duplicate) = (count(O::Accepted), count(O::Duplicate));
    let refused = p.outcomes.len() - accepted - duplicate;
    if conn.json {
        print_json(&serde_json::json!({
            "rounds": p.rounds, "relayed": p.outcomes.len(), "accepted": accepted,
            "duplicate": duplicate, "refused_or_pending": refused,
        }))
    } else {
        println!(
            "pulled from {} into {}: {accepted} accepted, {duplicate} already held, {refused} refused or pending, in {} rounds",
            from.display(),
            conn.socket.display(),
            p.rounds
        );
        Ok(())
    }
}

/// Every record the TCB holds, parents before children, paged by the heads of what came so far.
async fn all_records(client: &ppn_tcb_client::TcbClient, conn: &Conn) -> Result<Vec<ppn_ledger::Record>, String> {
    use ppn_wire::service::{HAVE_MAX, RECORDS_PER_FRAME};
    use std::collections::BTreeSet;
    let (mut records, mut ids, mut heads) = (Vec::new(), BTreeSet::new(), BTreeSet::new());
    loop {
        let ask: Vec<_> = heads.iter().copied().take(HAVE_MAX).collect();
        let answer = client.records_lacking(&ask, RECORDS_PER_FRAME as u16).await.map_err(conn.context())?;
        let before = records.len();
        for bytes in &answer.records {
            let r = ppn_ledger::Record::decode(bytes)
                .map_err(|e| format!("the TCB sent a record that does not decode: {e}"))?;
            for p in &r.parents {
                heads.remove(p);
            }
            if ids.insert(r.id) {
                heads.insert(r.id);
                records.push(r);
            }
        }
        // Done when nothing more is lacking, or a round brought nothing new (more heads than
        // one request can name: what is listed is then all this can reach).
        if !answer.more || records.len() == before {
            return Ok(records);
        }
    }
}

async fn provisioned(conn: &Conn) -> Result<(), String> {
    let client = conn.connect().await?;
    let records = all_records(&client, conn).await?;
    let hex = |b: &[u8]| b.iter().map(|x| format!("{x:02x}")).collect::<String>();
    let rows: Vec<serde_json::Value> = records
        .iter()
        .filter_map(|r| match r.body {
            ppn_ledger::Body::ImageProvisioned { root_hash, statement } => Some(serde_json::json!({
                "record": hex(&r.id.0),
                "node": r.author.to_string(),
                "created_unix_s": r.created_unix_s,
                "root_hash": hex(&root_hash),
                "statement_sha256": hex(&statement),
            })),
            _ => None,
        })
        .collect();
    if conn.json {
        return print_json(&serde_json::json!({ "records": records.len(), "provisioned": rows }));
    }
    println!("{} provisioning records in {} ledger records", rows.len(), records.len());
    for r in &rows {
        println!(
            "  node {}  at {}  root hash {}\n    statement sha256 {}  record {}",
            r["node"].as_str().unwrap_or_default(),
            r["created_unix_s"],
            r["root_hash"].as_str().unwrap_or_default(),
            r["statement_sha256"].as_str().unwrap_or_default(),
            r["record"].as_str().unwrap_or_default()
        );
    }
    Ok(())
}

async fn show(conn: &Conn) -> Result<(), String> {
    let client = conn.connect().await?;
    let summary = client.ledger_summary().await.map_err(conn.context())?;
    let heads = client.heads().await.map_err(conn.context())?;
    if conn.json {
        print_json(&show_json(&summary, &heads))
    } else {
        print!("{}", show_text(&conn.socket, &summary, &heads));
        Ok(())
    }
}

fn show_json(s: &LedgerSummary, h: &Heads) -> serde_json::Value {
    serde_json::json!({
        "record_count": s.record_count,
        "head_count": s.heads,
        "heads": h.heads.iter().map(|d| format!("{d:x}")).collect::<Vec<_>>(),
        "pending": s.pending,
        "pending_dropped": s.pending_dropped,
        "root_count": s.root_count,
        "admitted_count": s.admitted_count,
        "revoked_node_count": s.revoked_node_count,
        "revoked_nodes": s.revoked_nodes.iter().map(|n| n.to_string()).collect::<Vec<_>>(),
        "revoked_grant_ranges": s.revoked_grant_ranges,
        "next_sequence": s.next_sequence,
    })
}

fn show_text(socket: &Path, s: &LedgerSummary, h: &Heads) -> String {
    let mut out = String::new();
    let _ = writeln!(out, "ledger at {}", socket.display());
    let _ = writeln!(out, "  records        {}", s.record_count);
    let _ = writeln!(out, "  heads          {}", s.heads);
    for head in &h.heads {
        let _ = writeln!(out, "                 {head:x}");
    }
    if (h.heads.len() as u32) < s.heads {
        let _ = writeln!(out, "                 ... {} more", s.heads - h.heads.len() as u32);
    }
    let _ = writeln!(out, "  pending        {} ({} dropped since start)", s.pending, s.pending_dropped);
    let _ = writeln!(out, "  roots          {}", s.root_count);
    let _ = writeln!(out, "  admitted       {}", s.admitted_count);
    let _ = writeln!(out, "  revoked nodes  {}", s.revoked_node_count);
    for node in &s.revoked_nodes {
        let _ = writeln!(out, "                 {node}");
    }
    if (s.revoked_nodes.len() as u32) < s.revoked_node_count {
        let _ = writeln!(out, "                 ... {} more", s.revoked_node_count - s.revoked_nodes.len() as u32);
    }
    let _ = writeln!(out, "  revoked grants {} disjoint sequence ranges", s.revoked_grant_ranges);
    let _ = writeln!(out, "  next sequence  {}", s.next_sequence);
    out
}

async fn roots(conn: &Conn) -> Result<(), String> {
    let client = conn.connect().await?;
    let keys = client.ledger_roots().await.map_err(conn.context())?;
    let keys: Vec<String> = keys.iter().map(|k| format!("{k:x}")).collect();
    if conn.json {
        print_json(&serde_json::json!({ "roots": keys }))
    } else {
        for k in keys {
            println!("{k}");
        }
        Ok(())
    }
}

async fn trust(conn: &Conn) -> Result<(), String> {
    use ppn_attest::{Standing, TrustFile};
    let client = conn.connect().await?;
    let members = client.ledger_members().await.map_err(conn.context())?;
    let mut file = TrustFile::new();
    for m in &members {
        let standing = if m.trusted { Standing::Trusted } else { Standing::Revoked };
        file.insert(m.signing_key.0, standing).map_err(|e| e.to_string())?;
    }
    print!("{}", file.encode());
    Ok(())
}

async fn members(conn: &Conn) -> Result<(), String> {
    use base64::Engine as _;
    let client = conn.connect().await?;
    let members = client.ledger_members().await.map_err(conn.context())?;
    let wg = |m: &ppn_wire::service::Member| m.wireguard.map(|k| base64::engine::general_purpose::STANDARD.encode(k.0));
    if conn.json {
        let list: Vec<_> = members
            .iter()
            .map(|m| {
                serde_json::json!({
                    "node_id": m.node_id.to_string(), "signing_key": format!("{:x}", m.signing_key),
                    "wireguard": wg(m), "root": m.root, "trusted": m.trusted,
                })
            })
            .collect();
        print_json(&serde_json::json!({ "members": list }))
    } else {
        println!("{:<16}  {:<7}  {:<5}  {:<44}  signing key", "node", "trusted", "root", "mesh key (WireGuard)");
        for m in &members {
            println!(
                "{:<16}  {:<7}  {:<5}  {:<44}  {:x}",
                m.node_id.to_string(),
                if m.trusted { "yes" } else { "no" },
                if m.root { "root" } else { "-" },
                wg(m).unwrap_or_else(|| "-".into()),
                m.signing_key
            );
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use ppn_wire::ByteArray;
    use ppn_wire::service::NodeId;

    #[test]
    fn show_lists_heads_and_revoked_nodes_and_says_when_it_cut_them() {
        let summary = LedgerSummary {
            record_count: 70,
            heads: 2,
            pending: 1,
            pending_dropped: 0,
            root_count: 2,
            admitted_count: 0,
            revoked_node_count: 66,
            revoked_nodes: (0..64u8).map(|i| NodeId(ByteArray([i; 8]))).collect(),
            revoked_grant_ranges: 3,
            next_sequence: 1024,
        };
        let heads =
            Heads { heads: [ByteArray([0xab; 32])].into_iter().collect(), known: Default::default(), record_count: 70 };
        let text = show_text(Path::new("/s.sock"), &summary, &heads);
        assert!(text.starts_with("ledger at /s.sock\n  records        70\n  heads          2\n"), "{text}");
        assert!(text.contains(&format!("                 {}\n                 ... 1 more", "ab".repeat(32))), "{text}");
        assert!(text.contains("revoked nodes  66\n                 0000000000000000\n"), "{text}");
        assert!(text.contains("... 2 more\n  revoked grants 3 disjoint"), "{text}");
        assert!(text.ends_with("next sequence  1024\n"), "{text}");
        let json = show_json(&summary, &heads);
        assert_eq!(json["revoked_nodes"].as_array().map(Vec::len), Some(64));
        assert_eq!(json["heads"][0], "ab".repeat(32));
        assert_eq!(json["next_sequence"], 1024);
    }
}
