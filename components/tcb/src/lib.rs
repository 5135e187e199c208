//! The TCB's request dispatch, one implementation for every platform: the hosted TCB
//! (`system/hosted`) and the seL4 ledger PD (`system/microkit/ledger`) both wrap a [`TcbCore`]
//! and supply only what a platform knows: its storage, its clock and its uptime.
#![no_std]
#![forbid(unsafe_code)]

extern crate alloc;

use alloc::format;
use ppn_journal::Storage;
use ppn_ledger::Ledger;
use ppn_node_core::{NodeCore, Runtime};
use ppn_wire::service::{ServiceState, ServiceStatus};
use ppn_wire::{ErrorCode, Header, Request, Response};

/// Services and whether this build answers them.
pub const SERVICES: [ServiceStatus; 4] = [
    ServiceStatus { service: 0x01, state: ServiceState::Ready },
    ServiceStatus { service: 0x02, state: ServiceState::Ready },
    ServiceStatus { service: 0x03, state: ServiceState::NotImplemented },
    ServiceStatus { service: 0x04, state: ServiceState::NotImplemented },
];

/// The node and ledger cores, and the counters `NodeStatus` reports.
#[derive(Debug)]
pub struct TcbCore<S: Storage> {
    node: NodeCore,
    ledger: Ledger<S>,
    served: u64,
    failed: u64,
}

impl<S: Storage> TcbCore<S> {
    pub fn new(node: NodeCore, ledger: Ledger<S>) -> Self {
        Self { node, ledger, served: 0, failed: 0 }
    }

    pub fn node(&self) -> &NodeCore {
        &self.node
    }

    pub fn ledger(&self) -> &Ledger<S> {
        &self.ledger
    }

    /// Answers one request. Every service that has not landed answers `NotImplemented`.
    /// `uptime_ms` and `now_unix_s` are the platform's own clock, never the proxy's.
    pub fn answer(&mut self, request: &Request, uptime_ms: u64, now_unix_s: u64) -> Response {
        let response = match request {
            Request::Node(r) => {
                let rt = Runtime {
                    uptime_ms,
                    requests_served: self.served,
                    requests_failed: self.failed,
                    services: &SERVICES,
                };
                Response::Node(self.node.handle(r, &rt))
            }
            Request::Ledger(r) => match self.ledger.handle(r, now_unix_s) {
                Ok(answer) => Response::Ledger(answer),
                Err(refusal) => Response::error(refusal.code, refusal.detail),
            },
            Request::Lender(_) | Request::Attest(_) => {
                let detail = format!("the {} service has not landed in this TCB build", request.service().name());
                Response::error(ErrorCode::NotImplemented, &detail)
            }
        };
        match response {
            Response::Error(_) => self.failed += 1,
            _ => self.served += 1,
        }
        response
    }

    /// Decodes a request frame and writes its response frame into `out` (at least
    /// `MAX_FRAME_LEN` bytes); returns the response frame's length. Never fails: an undecodable
    /// frame gets an error frame, with the request id if the header could be read, else 0.
    pub fn handle_frame(&mut self, frame: &[u8], out: &mut [u8], uptime_ms: u64, now_unix_s: u64) -> usize {
        match ppn_wire::decode_request(frame) {
            Ok((id, request)) => {
                let response = self.answer(&request, uptime_ms, now_unix_s);
                encode_or_internal(id, &response, out)
            }
            Err(e) => {
                let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                self.refuse(id, &format!("{e}"), out)
            }
        }
    }

    /// Counts a frame that never reached a service (a stream error, an oversize buffer) and
    /// writes its `BadFrame` error frame into `out`; returns its length.
    pub fn refuse(&mut self, request_id: u32, detail: &str, out: &mut [u8]) -> usize {
        self.failed += 1;
        encode_or_internal(request_id, &Response::error(ErrorCode::BadFrame, detail), out)
    }
}

fn encode_or_internal(request_id: u32, response: &Response, out: &mut [u8]) -> usize {
    match ppn_wire::encode_response(request_id, response, out) {
        Ok(n) => n,
        // Every response type fits MAX_BODY_LEN (a wire test checks it); this is a last resort,
        // and an error frame with a 128-byte detail always fits MAX_FRAME_LEN.
        Err(e) => ppn_wire::encode_response(request_id, &Response::error(ErrorCode::Internal, &format!("{e}")), out)
            .unwrap_or(0),
    }
}
