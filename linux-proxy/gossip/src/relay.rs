//! The read-only relay a node's proxy offers its peers: a peer that wants the records it lacks
//! opens a stream through the mesh and speaks the TCB wire protocol over it, and this relay
//! passes the requests of [`RELAYED`] kinds to the local TCB and the answers back. Every other
//! kind is refused with a `Rejected` error frame and never reaches the TCB: a peer can read this
//! node's public ledger, never issue, revoke, ingest or learn anything else.
//!
//! Nothing here is trusted: the peer checks every record it receives in its own TCB.

use ppn_tcb_client::{ClientError, TcbClient};
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::{ErrorCode, Header, Kind, MAX_FRAME_LEN, Response};
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// The request kinds a peer may send through the relay: reads of the public ledger.
pub const RELAYED: [Kind; 4] = [Kind::NodeIdentity, Kind::LedgerHeads, Kind::LedgerRecordsLacking, Kind::LedgerSummary];

/// What one relay connection did.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RelayStats {
    pub relayed: u64,
    pub refused: u64,
}

/// Serves one peer connection until it closes.
pub async fn serve<S: AsyncRead + AsyncWrite + Unpin>(
    stream: S,
    tcb: &TcbClient,
) -> Result<RelayStats, std::io::Error> {
    let (mut read, mut write) = tokio::io::split(stream);
    let mut deframer = Box::new(Deframer::new());
    let mut buf = vec![0u8; 16 * 1024];
    let mut frame_out = vec![0u8; MAX_FRAME_LEN];
    let mut encoded = vec![0u8; MAX_ENCODED_LEN];
    let mut stats = RelayStats::default();
    loop {
        let n = read.read(&mut buf).await?;
        if n == 0 {
            return Ok(stats);
        }
        let mut rest = &buf[..n];
        while !rest.is_empty() {
            let (used, event) = deframer.push(rest);
            rest = &rest[used..];
            let response_len = match event {
                None => continue,
                Some(Err(e)) => {
                    stats.refused += 1;
                    let r = Response::error(ErrorCode::BadFrame, &e.to_string());
                    encode(0, &r, &mut frame_out)
                }
                Some(Ok(frame)) => {
                    let (id, response) = answer(frame, tcb, &mut stats).await;
                    encode(id, &response, &mut frame_out)
                }
            };
            let n = stream::encode(&frame_out[..response_len], &mut encoded).map_err(std::io::Error::other)?;
            write.write_all(&encoded[..n]).await?;
        }
    }
}

async fn answer(frame: &[u8], tcb: &TcbClient, stats: &mut RelayStats) -> (u32, Response) {
    let (id, request) = match ppn_wire::decode_request(frame) {
        Ok(ok) => ok,
        Err(e) => {
            stats.refused += 1;
            let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
            return (id, Response::error(ErrorCode::BadFrame, &e.to_string()));
        }
    };
    let kind = request.kind();
    if !RELAYED.contains(&kind) {
        stats.refused += 1;
        let detail = format!("{kind:?} is not relayed to peers (only reads of the public ledger are)");
        return (id, Response::error(ErrorCode::Rejected, &detail));
    }
    stats.relayed += 1;
    let response = match tcb.call(&request).await {
        Ok(r) => r,
        Err(ClientError::Tcb { code, detail }) => Response::error(code, &detail),
        Err(e) => Response::error(ErrorCode::Busy, &format!("this node's TCB did not answer: {e}")),
    };
    (id, response)
}

fn encode(id: u32, response: &Response, out: &mut [u8]) -> usize {
    match ppn_wire::encode_response(id, response, out) {
        Ok(n) => n,
        Err(e) => {
            ppn_wire::encode_response(id, &Response::error(ErrorCode::Internal, &e.to_string()), out).unwrap_or(0)
        }
    }
}
