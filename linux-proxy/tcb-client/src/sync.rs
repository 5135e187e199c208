//! Ledger sync between two TCBs, driven by the proxy: it relays, it never decides. Every record
//! is checked by the TCB that receives it.

use crate::{ClientError, TcbClient};
use ppn_wire::ByteArray;
use ppn_wire::service::{IngestOutcome, RECORDS_PER_FRAME};
use ppn_wire::sync::Pull;
use sha2::{Digest as _, Sha256};

/// What one pull did.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct PullStats {
    pub rounds: u32,
    /// The receiving TCB's outcome for every record relayed, in order.
    pub outcomes: Vec<IngestOutcome>,
}

impl PullStats {
    pub fn accepted(&self) -> usize {
        self.outcomes.iter().filter(|o| **o == IngestOutcome::Accepted).count()
    }
}

/// Brings into `into` every record of `from` that `into` accepts, 12 records a round.
pub async fn pull(into: &TcbClient, from: &TcbClient) -> Result<PullStats, ClientError> {
    pull_with(into, from, RECORDS_PER_FRAME as u16).await
}

/// [`pull`] with at most `limit` records a round.
pub async fn pull_with(into: &TcbClient, from: &TcbClient, limit: u16) -> Result<PullStats, ClientError> {
    let mut p = Pull::new();
    let mut outcomes = Vec::new();
    loop {
        let heads = into.heads().await?;
        let ask = p.ask(&heads, limit);
        let answer = from.records_lacking(&ask.peer_heads, ask.limit).await?;
        if answer.records.is_empty() {
            break;
        }
        let got = into.ingest_records(&answer.records).await?;
        let again = p.answered(&answer, &got, |r| ByteArray(Sha256::digest(r).into()));
        outcomes.extend(got);
        if !again {
            break;
        }
    }
    Ok(PullStats { rounds: p.rounds(), outcomes })
}
