//! The `ledger` protection domain: the node core and the ledger core behind one protected
//! procedure, entered by `link` with a request frame in the shared buffer
//! (`ppn_layout::buffer`). It holds the node's secrets: the identity seed comes from the
//! virtio-rng device (never a constant: no device, no start), the heap is the secret
//! `ledger_state` region.
//!
//! Not done yet: the journal is in memory (`MemStorage`), so the identity and the ledger are
//! new at every boot of the image; the virtio-blk journal is the next step (issue 4).
#![no_std]
#![no_main]

extern crate alloc;

mod rng;

use alloc::sync::Arc;
use alloc::vec;
use alloc::vec::Vec;
use one_shot_mutex::sync::RawOneShotMutex;
use ppn_journal::mem::MemStorage;
use ppn_layout::{buffer, ledger as lay};
use ppn_ledger::{Ledger, Roots};
use ppn_microkit_support::{RequestBuffer, timer};
use ppn_node_core::{NodeCore, NodeKeys};
use ppn_tcb_core::TcbCore;
use ppn_wire::service::Platform;
use ppn_wire::MAX_FRAME_LEN;
use sel4_dlmalloc::{DeferredStaticDlmalloc, StaticHeapBounds};
use sel4_microkit::{Channel, ChannelSet, Handler, Infallible, MessageInfo, debug_println, protection_domain};
use zeroize::Zeroizing;

/// The heap lives in the secret `ledger_state` region (its bounds are set first thing in init).
#[global_allocator]
static ALLOCATOR: DeferredStaticDlmalloc<RawOneShotMutex> = DeferredStaticDlmalloc::new();

/// Patched by Microkit with the physical address of `ledger_rng_dma` (SDF `setvar`).
#[unsafe(no_mangle)]
#[used]
static mut ppn_rng_dma_paddr: u64 = 0;

/// Patched by Microkit with the physical address of `ledger_blk_dma`. Unused until the journal
/// moves to virtio-blk; the symbol must exist for the SDF's `setvar`.
#[unsafe(no_mangle)]
#[used]
static mut ppn_blk_dma_paddr: u64 = 0;

const LINK: Channel = Channel::new(lay::LINK_CHANNEL as usize);
const RNG_IRQ: Channel = Channel::new(lay::RNG_IRQ as usize);
const BLK_IRQ: Channel = Channel::new(lay::BLK_IRQ as usize);

/// Services and whether this build answers them (as the hosted TCB).
/// The TCB's clock: the build time plus the generic timer's uptime. There is no RTC in the
/// image yet, so every boot starts its clock at the build time (docs/sel4-image.md).
fn now_unix_s() -> u64 {
    let build: u64 = match u64::from_str_radix(env!("PPN_BUILD_UNIX_S"), 10) {
        Ok(v) => v,
        Err(_) => 0,
    };
    build + timer::uptime_ms() / 1000
}

#[protection_domain]
fn init() -> LedgerPd {
    let bounds = StaticHeapBounds::new(lay::STATE_VADDR as *mut u8, lay::STATE_SIZE as usize);
    if ALLOCATOR.set_bounds(bounds).is_err() {
        panic!("ledger: heap bounds set twice");
    }
    // SAFETY: Microkit patched the symbol before the PD started; nothing writes it afterwards.
    let rng_paddr = unsafe { core::ptr::read_volatile(&raw const ppn_rng_dma_paddr) };
    // SAFETY: RNG_REGS_VADDR and RNG_DMA_VADDR are this PD's mappings of the rng registers and
    // its one-page DMA region (ppn-layout, checked against the SDF by `ppn sdf check`); the
    // region's physical address is the patched symbol.
    let mut rng = match unsafe { rng::Rng::new(lay::RNG_REGS_VADDR, lay::RNG_DMA_VADDR, rng_paddr) } {
        Ok(r) => r,
        Err(e) => panic!("ledger: no entropy source ({e:?}); refusing to create an identity"),
    };
    let mut seed = Zeroizing::new([0u8; 32]);
    if let Err(e) = rng.fill(&mut seed[..]) {
        panic!("ledger: entropy source failed ({e:?}); refusing to create an identity");
    }
    if seed.iter().all(|&b| b == 0) {
        panic!("ledger: entropy source returned zeros; refusing to create an identity");
    }
    let keys = NodeKeys::from_seed(&seed);
    drop(seed);
    let mut roots = Roots::default();
    if !roots.add(&keys.signing_public()) {
        panic!("ledger: own signing key is not a valid Ed25519 key");
    }
    let node = NodeCore::new(&keys, Platform::Sel4Microkit, env!("CARGO_PKG_VERSION"), 1);
    let ledger = match Ledger::open(keys, Arc::new(roots), MemStorage::default()) {
        Ok((l, _)) => l,
        Err(e) => panic!("ledger: cannot open the ledger: {e}"),
    };
    debug_println!("ledger: ready (identity from virtio-rng; journal in memory: state is lost at reboot)");
    LedgerPd {
        core: TcbCore::new(node, ledger),
        // SAFETY: REQUEST_BUFFER_VADDR is this PD's read-write mapping of link_ledger_buffer,
        // buffer::SIZE bytes (ppn-layout, checked against the SDF).
        buffer: unsafe { RequestBuffer::new(lay::REQUEST_BUFFER_VADDR) },
        request: vec![0u8; buffer::FRAME_CAPACITY],
        response: vec![0u8; MAX_FRAME_LEN],
        started_ms: timer::uptime_ms(),
    }
}

struct LedgerPd {
    /// The node and ledger cores behind the same dispatch as the hosted TCB.
    core: TcbCore<MemStorage>,
    buffer: RequestBuffer,
    request: Vec<u8>,
    response: Vec<u8>,
    started_ms: u64,
}

impl core::fmt::Debug for LedgerPd {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("LedgerPd").field("node", &self.core.node().node_id()).finish_non_exhaustive()
    }
}

impl LedgerPd {
    /// Copies the request out of the shared buffer, then decodes and answers it (the same
    /// `TcbCore` dispatch as the hosted TCB); writes the response frame back.
    fn handle_buffer(&mut self) {
        let uptime = timer::uptime_ms().saturating_sub(self.started_ms);
        let n = match self.buffer.read_frame(&mut self.request) {
            // The frame is now in our own memory: the caller can no longer change it.
            Ok(len) => self.core.handle_frame(&self.request[..len], &mut self.response, uptime, now_unix_s()),
            Err(_) => self.core.refuse(0, "request length exceeds the frame buffer", &mut self.response),
        };
        if self.buffer.write_frame(&self.response[..n]).is_err() {
            debug_println!("ledger: response frame too long for the buffer");
        }
    }
}

impl Handler for LedgerPd {
    type Error = Infallible;

    fn protected(&mut self, channel: Channel, msg_info: MessageInfo) -> Result<MessageInfo, Self::Error> {
        if channel != LINK || msg_info.label() != buffer::CALL_FRAME {
            return Ok(MessageInfo::new(buffer::REPLY_NONE, 0));
        }
        self.handle_buffer();
        Ok(MessageInfo::new(buffer::REPLY_FRAME, 0))
    }

    /// The rng is polled and the disk not used yet: their interrupts are acknowledged and
    /// otherwise ignored.
    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        for irq in [RNG_IRQ, BLK_IRQ] {
            if channels.contains(irq) {
                irq.irq_ack().ok();
            }
        }
        Ok(())
    }
}
