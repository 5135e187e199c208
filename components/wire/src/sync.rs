//! The requesting side of ledger sync, as a small state machine. The proxy drives it between two
//! TCBs (`ppn_tcb_client::sync::pull`); the gossip simulator drives it between simulated nodes.
//!
//! A round: take the requester's [`Heads`], ask the peer `RecordsLacking(heads.have(extra))`,
//! ingest the answer at the requester, then [`Pull::answered`] says whether to ask again. Records
//! the requester turned out to hold already (`Duplicate`) are named in the next request, so the
//! peer stops resending them: every round either lands a record or teaches the peer something,
//! and the loop ends when neither happens or nothing more is lacking.

use crate::service::{Digest, HAVE_MAX, Heads, IngestOutcome, Records, RecordsLacking};
use heapless::Vec;

/// One pull of what a requester lacks from one peer.
#[derive(Debug, Default, Clone)]
pub struct Pull {
    /// Records found to be held already, newest first.
    extra: Vec<Digest, HAVE_MAX>,
    rounds: u32,
}

impl Pull {
    pub fn new() -> Self {
        Self::default()
    }

    /// Rounds asked so far.
    pub fn rounds(&self) -> u32 {
        self.rounds
    }

    /// The next request, from the requester's current heads.
    pub fn ask(&mut self, heads: &Heads, limit: u16) -> RecordsLacking {
        self.rounds += 1;
        RecordsLacking { peer_heads: heads.have(&self.extra), limit }
    }

    /// Takes the peer's answer and the requester's outcome for each record (in order);
    /// `id_of` gives a record's id (SHA-256 of its bytes). Returns true to ask again.
    pub fn answered(&mut self, answer: &Records, outcomes: &[IngestOutcome], id_of: impl Fn(&[u8]) -> Digest) -> bool {
        let mut progress = false;
        for (record, outcome) in answer.records.iter().zip(outcomes) {
            match outcome {
                IngestOutcome::Accepted => progress = true,
                IngestOutcome::Duplicate => {
                    let id = id_of(record);
                    if !self.extra.contains(&id) {
                        if self.extra.is_full() {
                            self.extra.pop();
                        }
                        // Cannot fail: room was made above.
                        let _ = self.extra.insert(0, id);
                        progress = true;
                    }
                }
                _ => {}
            }
        }
        answer.more && progress
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ByteArray;

    fn id(n: u8) -> Digest {
        ByteArray([n; 32])
    }

    #[test]
    fn have_puts_heads_then_extra_then_known_without_repeats() {
        let heads = Heads {
            heads: [id(1), id(2)].into_iter().collect(),
            known: [id(3), id(2), id(4)].into_iter().collect(),
            record_count: 9,
        };
        let have = heads.have(&[id(5), id(1)]);
        assert_eq!(&have[..], &[id(1), id(2), id(5), id(3), id(4)]);
    }

    #[test]
    fn duplicates_are_named_next_time_and_no_progress_stops() {
        let heads = Heads { heads: [id(1)].into_iter().collect(), known: Default::default(), record_count: 1 };
        let mut p = Pull::new();
        assert_eq!(&p.ask(&heads, 12).peer_heads[..], &[id(1)]);
        let answer = Records {
            records: [[7u8].as_slice(), [8u8].as_slice()]
                .iter()
                .map(|b| heapless::Vec::from_slice(b).unwrap())
                .collect(),
            more: true,
        };
        let dup = [IngestOutcome::Duplicate, IngestOutcome::Duplicate];
        let id_of = |b: &[u8]| id(b[0]);
        assert!(p.answered(&answer, &dup, id_of));
        assert_eq!(&p.ask(&heads, 12).peer_heads[..], &[id(1), id(8), id(7)]);
        // The same duplicates again teach nothing: stop rather than spin.
        assert!(!p.answered(&answer, &dup, id_of));
        assert_eq!(p.rounds(), 2);
        // An accepted record is progress, but not when nothing more is lacking.
        let done = Records { more: false, ..answer.clone() };
        assert!(!p.answered(&done, &[IngestOutcome::Accepted, IngestOutcome::Accepted], id_of));
    }
}
