//! The `lender` protection domain: the lender core (`ppn_tcb_core::LenderService`, the same
//! service the hosted TCB runs inside its `TcbCore`) behind one protected procedure, entered by
//! `link` with a lender request frame in `link_lender_buffer` (`ppn_layout::buffer`).
//! - its journal is on a virtio-blk disk of its own (`ppn_layout::lender_disk`), a device the
//!   ledger PD cannot reach, as the ledger's disk is out of this PD's reach;
//! - its pool is the `lender_pool` region, mapped into this PD only; a scrub zeroes its blocks;
//! - it holds no keys: lease tokens, trust, revocations and the time come from the ledger PD, by
//!   protected procedure call over `lender_ledger_buffer` (`ppn_layout::ledger_port`,
//!   `ppn_tcb_core::remote`).
#![no_std]
#![no_main]

extern crate alloc;

mod disk;

use alloc::format;
use alloc::string::String;
use alloc::vec;
use alloc::vec::Vec;
use ppn_journal::block::BlockStorage;
use ppn_layout::{buffer, lender as lay, lender_disk};
use ppn_lender::BlockRange;
use ppn_microkit_support::{PortBuffer, PortCall, RequestBuffer, serve_frame, timer};
use ppn_tcb_core::remote::RemoteLedger;
use ppn_tcb_core::{LedgerPort, LenderService, Scrub};
use ppn_wire::{ErrorCode, MAX_FRAME_LEN, Request, Response};
use sel4_microkit::{Channel, ChannelSet, Handler, Infallible, MessageInfo, debug_println, protection_domain};

/// Patched by Microkit with the physical address of `lender_blk_dma` (SDF `setvar`).
#[unsafe(no_mangle)]
#[used]
static mut ppn_lender_blk_dma_paddr: u64 = 0;

const LINK: Channel = Channel::new(lay::LINK_CHANNEL as usize);
const LEDGER: Channel = Channel::new(lay::LEDGER_CHANNEL as usize);
const BLK_IRQ: Channel = Channel::new(lay::BLK_IRQ as usize);

const _: () = assert!(lay::BLOCK_BYTES == ppn_lender::BLOCK_BYTES as u64, "the layout's block is the lender's");

type Storage = BlockStorage<disk::Disk>;

/// Zeroes pool blocks in `lender_pool`. The pool is this PD's memory alone and nothing reaches
/// it by DMA, so zeroing through the cache and a barrier make the zeros what every later reader
/// of the block sees.
#[derive(Debug)]
struct PoolScrub;

impl Scrub for PoolScrub {
    fn scrub(&mut self, range: BlockRange) -> Result<(), String> {
        let end = u64::from(range.start) + u64::from(range.len);
        if end > u64::from(lay::POOL_BLOCKS) {
            return Err(format!("blocks {}..{end} are outside the pool of {}", range.start, lay::POOL_BLOCKS));
        }
        let start = lay::POOL_VADDR + u64::from(range.start) * lay::BLOCK_BYTES;
        let bytes = u64::from(range.len) * lay::BLOCK_BYTES;
        // SAFETY: [start, start + bytes) lies inside this PD's read-write mapping of lender_pool
        // (POOL_VADDR, POOL_BLOCKS blocks; checked above and by `ppn sdf check`); no Rust
        // reference to pool memory exists anywhere in this PD, so the write aliases nothing.
        unsafe { core::ptr::write_bytes(start as *mut u8, 0, bytes as usize) };
        core::sync::atomic::fence(core::sync::atomic::Ordering::SeqCst);
        Ok(())
    }
}

#[protection_domain(heap_size = 0x20_0000)]
fn init() -> LenderPd {
    let started_ms = timer::uptime_ms();
    // SAFETY: Microkit patched the symbol before the PD started; nothing writes it afterwards.
    let blk_paddr = unsafe { core::ptr::read_volatile(&raw const ppn_lender_blk_dma_paddr) };
    // SAFETY: called once; BLK_REGS_VADDR and BLK_DMA_VADDR are this PD's mappings of the lender
    // disk's registers and of lender_blk_dma, whose physical address Microkit patched in.
    let disk = match unsafe { disk::open(blk_paddr) } {
        Ok(d) => d,
        Err(e) => panic!("lender: no usable disk ({e:?}); the lender journal needs one"),
    };
    let storage = match BlockStorage::open(disk, lender_disk::LENDER_JOURNAL) {
        Ok((s, _)) => s,
        Err(e) => panic!("lender: journal area {}: {e}", lender_disk::LENDER_JOURNAL.tag),
    };
    let (service, open) = match LenderService::open(storage, lay::POOL_BLOCKS, alloc::boxed::Box::new(PoolScrub)) {
        Ok(s) => s,
        Err(e) => panic!("lender: cannot open the pool: {e}"),
    };
    let pool = service.pool();
    debug_println!(
        "lender: ready: {} blocks of {} MiB, {} free, {} lent; journal {}; {} leases released at open, {} blocks \
         scrubbed; {} ms",
        pool.total,
        pool.block_bytes >> 20,
        pool.free,
        pool.lent,
        if open.journal.created { "created" } else { "replayed" },
        open.released_unbound.len(),
        open.scrubbed_blocks,
        timer::uptime_ms().saturating_sub(started_ms),
    );
    LenderPd {
        service,
        ledger: None,
        // SAFETY: REQUEST_BUFFER_VADDR is this PD's read-write mapping of link_lender_buffer,
        // buffer::SIZE bytes (ppn-layout, checked against the SDF).
        buffer: unsafe { RequestBuffer::new(lay::REQUEST_BUFFER_VADDR) },
        request: vec![0u8; buffer::FRAME_CAPACITY],
        response: vec![0u8; MAX_FRAME_LEN],
    }
}

struct LenderPd {
    service: LenderService<Storage>,
    /// The ledger port, connected (the node id asked) at the first lender request.
    ledger: Option<RemoteLedger<PortCall>>,
    buffer: RequestBuffer,
    request: Vec<u8>,
    response: Vec<u8>,
}

impl core::fmt::Debug for LenderPd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LenderPd").field("service", &self.service).finish_non_exhaustive()
    }
}

impl LenderPd {
    fn ledger(&mut self) -> Result<&mut RemoteLedger<PortCall>, String> {
        if self.ledger.is_none() {
            // SAFETY: LEDGER_BUFFER_VADDR is this PD's read-write mapping of lender_ledger_buffer,
            // ledger_port::BUFFER_SIZE bytes (ppn-layout, checked against the SDF).
            let buffer = unsafe { PortBuffer::new(lay::LEDGER_BUFFER_VADDR) };
            let remote =
                RemoteLedger::connect(PortCall::new(buffer, LEDGER)).map_err(|e| format!("ledger port: {e}"))?;
            // Once, for the operator: what one port call (a PPC to ledger and back) costs.
            let (start, calls) = (timer::ticks(), 100u64);
            for _ in 0..calls {
                remote.now_unix_s().map_err(|e| format!("ledger port: {e}"))?;
            }
            let ns = (timer::ticks() - start) as u128 * 1_000_000_000 / u128::from(timer::frequency().max(1));
            debug_println!(
                "lender: ledger port connected: node {}; {} ns per call",
                remote.node_id(),
                ns / u128::from(calls)
            );
            self.ledger = Some(remote);
        }
        self.ledger.as_mut().ok_or_else(|| String::from("ledger port: not connected"))
    }

    fn answer(&mut self, request: &Request) -> Response {
        let Request::Lender(r) = request else {
            let detail = format!("the {} service is not served by the lender PD", request.service().name());
            return Response::error(ErrorCode::NotImplemented, &detail);
        };
        if let Err(e) = self.ledger() {
            return Response::error(ErrorCode::Internal, &e);
        }
        let Some(ledger) = self.ledger.as_mut() else {
            return Response::error(ErrorCode::Internal, "ledger port: not connected");
        };
        let service = &mut self.service;
        // The TCB's one wall clock is the ledger's: a lease and its token expire together.
        let now = match ledger.now_unix_s() {
            Ok(t) => t,
            Err(e) => return Response::error(ErrorCode::Internal, &format!("ledger port: {e}")),
        };
        match service.handle(r, ledger, now) {
            Ok(a) => Response::Lender(a),
            Err((code, detail)) => Response::error(code, &detail),
        }
    }

    /// Copies the request out of the shared buffer, then decodes and answers it; writes the
    /// response frame back.
    fn handle_buffer(&mut self) {
        let (buffer, mut request, mut response) =
            (self.buffer, core::mem::take(&mut self.request), core::mem::take(&mut self.response));
        serve_frame(&buffer, &mut request, &mut response, "lender", |r| self.answer(r));
        (self.request, self.response) = (request, response);
    }
}

impl Handler for LenderPd {
    type Error = Infallible;

    fn protected(&mut self, channel: Channel, msg_info: MessageInfo) -> Result<MessageInfo, Self::Error> {
        if channel != LINK || msg_info.label() != buffer::CALL_FRAME {
            return Ok(MessageInfo::new(buffer::REPLY_NONE, 0));
        }
        self.handle_buffer();
        Ok(MessageInfo::new(buffer::REPLY_FRAME, 0))
    }

    /// The disk is polled: its interrupt is acknowledged and otherwise ignored.
    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        if channels.contains(BLK_IRQ) {
            BLK_IRQ.irq_ack().ok();
        }
        Ok(())
    }
}
