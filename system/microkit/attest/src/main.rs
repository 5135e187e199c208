//! The `attest` protection domain: the node's attestation key, and the attest service behind
//! one protected procedure, entered by `link` with an attest request frame in
//! `link_attest_buffer` (`ppn_layout::buffer`):
//! - its heap is the secret `attest_state` region, mapped into this PD alone: the attestation
//!   key lives there and nowhere else once the handoff is done;
//! - at its start it asks the ledger PD, over its own ledger port (`attest_ledger_buffer`,
//!   `ppn_layout::ledger_port`), for the key the ledger derived from the identity seed and for
//!   the key's certificate; the ledger drops its copy, and this PD wipes the port's page;
//! - it signs provisioning statements and reports with the same code as the hosted TCB
//!   (`ppn_tcb_core::attest`), at the ledger's clock (the TCB's one wall clock), and has the
//!   ledger record each statement (an `ImageProvisioned` record) before handing it out;
//! - it has no device and no disk: the key is the ledger's to derive again at the next boot.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use one_shot_mutex::sync::RawOneShotMutex;
use ppn_attest::Attester;
use ppn_layout::{attest as lay, buffer};
use ppn_microkit_support::{PortBuffer, PortCall, RequestBuffer, serve_frame, timer};
use ppn_tcb_core::LedgerPort;
use ppn_tcb_core::remote::{RemoteLedger, fetch_attester};
use ppn_wire::{ErrorCode, MAX_FRAME_LEN, Request, Response};
use sel4_dlmalloc::{DeferredStaticDlmalloc, StaticHeapBounds};
use sel4_microkit::{Channel, Handler, Infallible, MessageInfo, debug_println, protection_domain};

/// The heap lives in the secret `attest_state` region (its bounds are set first thing in init).
#[global_allocator]
static ALLOCATOR: DeferredStaticDlmalloc<RawOneShotMutex> = DeferredStaticDlmalloc::new();

const LINK: Channel = Channel::new(lay::LINK_CHANNEL as usize);
const LEDGER: Channel = Channel::new(lay::LEDGER_CHANNEL as usize);

#[protection_domain]
fn init() -> AttestPd {
    let bounds = StaticHeapBounds::new(lay::STATE_VADDR as *mut u8, lay::STATE_SIZE as usize);
    if ALLOCATOR.set_bounds(bounds).is_err() {
        panic!("attest: heap bounds set twice");
    }
    let started_ms = timer::uptime_ms();
    // SAFETY: LEDGER_BUFFER_VADDR is this PD's read-write mapping of attest_ledger_buffer,
    // ledger_port::BUFFER_SIZE bytes (ppn-layout, checked against the SDF).
    let port = PortCall::new(unsafe { PortBuffer::new(lay::LEDGER_BUFFER_VADDR) }, LEDGER);
    let attester = fetch_attester(&port).map_err(|e| format!("no attestation key from the ledger: {e}"));
    // The reply held the key: nothing of it stays in the page the ledger can read.
    port.buffer().wipe();
    let ledger = RemoteLedger::connect(port).map_err(|e| format!("ledger port: {e}"));
    let state = attester.and_then(|a| ledger.map(|l| (a, l)));
    match &state {
        Ok((a, l)) => debug_println!(
            "attest: ready: attestation key {} certified by node {}; {} ms",
            hex8(&a.cert().attest_key),
            l.node_id(),
            timer::uptime_ms().saturating_sub(started_ms)
        ),
        Err(e) => debug_println!("attest: {e}; every attest request is refused"),
    }
    AttestPd {
        state,
        // SAFETY: REQUEST_BUFFER_VADDR is this PD's read-write mapping of link_attest_buffer,
        // buffer::SIZE bytes (ppn-layout, checked against the SDF).
        buffer: unsafe { RequestBuffer::new(lay::REQUEST_BUFFER_VADDR) },
        request: vec![0u8; buffer::FRAME_CAPACITY],
        response: vec![0u8; MAX_FRAME_LEN],
    }
}

/// The first 8 bytes of a key, in hex, for the boot line.
fn hex8(key: &[u8; 32]) -> String {
    key[..8].iter().map(|b| format!("{b:02x}")).collect()
}

struct AttestPd {
    /// The attester and the ledger port (for the time), or why this PD has none.
    state: Result<(Attester, RemoteLedger<PortCall>), String>,
    buffer: RequestBuffer,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl core::fmt::Debug for AttestPd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("AttestPd").field("ready", &self.state.is_ok()).finish_non_exhaustive()
    }
}

impl AttestPd {
    fn answer(&mut self, request: &Request) -> Response {
        let Request::Attest(r) = request else {
            let detail = format!("the {} service is not served by the attest PD", request.service().name());
            return Response::error(ErrorCode::NotImplemented, &detail);
        };
        let (attester, ledger) = match &mut self.state {
            Ok((a, l)) => (a, l),
            Err(e) => return Response::error(ErrorCode::Internal, e),
        };
        let now = match ledger.now_unix_s() {
            Ok(t) => t,
            Err(e) => return Response::error(ErrorCode::Internal, &format!("ledger port: {e}")),
        };
        match ppn_tcb_core::attest::handle(attester, r, now, ledger) {
            Ok(a) => Response::Attest(a),
            Err((code, detail)) => Response::error(code, &detail),
        }
    }
}

impl Handler for AttestPd {
    type Error = Infallible;

    /// `link` calls with an attest request frame; any other call is refused with nothing read or
    /// written.
    fn protected(&mut self, channel: Channel, msg_info: MessageInfo) -> Result<MessageInfo, Self::Error> {
        if channel != LINK || msg_info.label() != buffer::CALL_FRAME {
            return Ok(MessageInfo::new(buffer::REPLY_NONE, 0));
        }
        let (buffer, mut request, mut response) =
            (self.buffer, core::mem::take(&mut self.request), core::mem::take(&mut self.response));
        serve_frame(&buffer, &mut request, &mut response, "attest", |r| self.answer(r));
        (self.request, self.response) = (request, response);
        Ok(MessageInfo::new(buffer::REPLY_FRAME, 0))
    }
}
