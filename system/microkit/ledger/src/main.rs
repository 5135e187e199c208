//! The `ledger` protection domain: the node core and the ledger core behind one protected
//! procedure, entered by `link` with a request frame in the shared buffer
//! (`ppn_layout::buffer`). It holds the node's secrets:
//! - the heap is the secret `ledger_state` region;
//! - both journals (node: identity seed and boots; ledger: records and sequence reservations)
//!   live on the virtio-blk disk, in the areas `ppn_layout::disk` gives them, so the identity
//!   and every revocation survive a reboot of the image;
//! - on the first boot the identity seed comes from the virtio-rng device (never a constant: no
//!   device, no identity);
//! - the wall clock that judges token expiry is the machine's PL031 real-time clock;
//! - it answers the `lender` PD's ledger-port calls (`ppn_layout::ledger_port`: lease tokens,
//!   trust, revocations, the time) on the lender's channel, and on no other;
//! - it derives the attestation key at boot, as the hosted TCB does, but does not serve the
//!   attest service: it hands the key to the `attest` PD at that PD's first port call, on the
//!   attest PD's channel only, and keeps no copy.
//!
//! It boots with the same sequence as the hosted TCB (`ppn_tcb_core::boot`).
#![no_std]
#![no_main]

extern crate alloc;

mod disk;
mod rng;
mod rtc;

use alloc::rc::Rc;
use alloc::vec;
use alloc::vec::Vec;
use core::cell::RefCell;
use one_shot_mutex::sync::RawOneShotMutex;
use ppn_journal::Journal;
use ppn_journal::block::BlockStorage;
use ppn_layout::ledger_port::Caller;
use ppn_layout::{buffer, disk as areas, ledger as lay, ledger_port};
use ppn_ledger::Roots;
use ppn_microkit_support::{PortBuffer, RequestBuffer, timer};
use ppn_tcb_core::TcbCore;
use ppn_wire::MAX_FRAME_LEN;
use ppn_wire::service::Platform;
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

/// Patched by Microkit with the physical address of `ledger_blk_dma` (SDF `setvar`).
#[unsafe(no_mangle)]
#[used]
static mut ppn_blk_dma_paddr: u64 = 0;

const LINK: Channel = Channel::new(lay::LINK_CHANNEL as usize);
const LENDER: Channel = Channel::new(lay::LENDER_CHANNEL as usize);
const ATTEST: Channel = Channel::new(lay::ATTEST_CHANNEL as usize);
const RNG_IRQ: Channel = Channel::new(lay::RNG_IRQ as usize);
const BLK_IRQ: Channel = Channel::new(lay::BLK_IRQ as usize);

/// Both journals share the one disk.
type SharedDisk = Rc<RefCell<disk::Disk>>;
type Storage = BlockStorage<SharedDisk>;

/// Brings up the virtio-rng device. Each call resets the device and takes over its queue, so
/// only one driver exists at a time: the first boot's seed is read through one that is then
/// dropped, and the pairing service owns the next.
fn open_rng() -> Result<rng::Rng, rng::RngError> {
    // SAFETY: Microkit patched the symbol before the PD started; nothing writes it afterwards.
    let paddr = unsafe { core::ptr::read_volatile(&raw const ppn_rng_dma_paddr) };
    // SAFETY: RNG_REGS_VADDR and RNG_DMA_VADDR are this PD's mappings of the rng registers and
    // its one-page DMA region (ppn-layout, checked against the SDF by `ppn sdf check`); the
    // region's physical address is the patched symbol; the previous driver, if any, is gone.
    unsafe { rng::Rng::new(lay::RNG_REGS_VADDR, lay::RNG_DMA_VADDR, paddr) }
}

/// Reads 32 bytes from the virtio-rng device (first boot only).
fn entropy(seed: &mut [u8; 32]) -> Result<(), rng::RngError> {
    open_rng()?.fill(&mut seed[..])
}

/// The virtio-rng device as the pairing service's entropy source.
struct RngEntropy(rng::Rng);

// SAFETY: a protection domain runs one thread; the driver's raw register and DMA pointers are
// only ever used from it.
unsafe impl Send for RngEntropy {}

impl ppn_tcb_core::Entropy for RngEntropy {
    fn fill(&mut self, out: &mut [u8]) -> Result<(), alloc::string::String> {
        self.0.fill(out).map_err(|e| alloc::format!("virtio-rng: {e:?}"))
    }
}

#[protection_domain]
fn init() -> LedgerPd {
    let bounds = StaticHeapBounds::new(lay::STATE_VADDR as *mut u8, lay::STATE_SIZE as usize);
    if ALLOCATOR.set_bounds(bounds).is_err() {
        panic!("ledger: heap bounds set twice");
    }
    // SAFETY: RTC_REGS_VADDR is this PD's read-only uncached mapping of the PL031's registers
    // (ppn-layout, checked against the SDF).
    let clock = unsafe { rtc::Clock::new(lay::RTC_REGS_VADDR) };
    // SAFETY: Microkit patched the symbol before the PD started; nothing writes it afterwards.
    let blk_paddr = unsafe { core::ptr::read_volatile(&raw const ppn_blk_dma_paddr) };
    // SAFETY: called once; BLK_REGS_VADDR and BLK_DMA_VADDR are this PD's mappings of the disk's
    // registers and of ledger_blk_dma, whose physical address Microkit patched into the symbol.
    let disk = match unsafe { disk::open(blk_paddr) } {
        Ok(d) => Rc::new(RefCell::new(d)),
        Err(e) => panic!("ledger: no usable disk ({e:?}); the journals need one"),
    };
    let open = |area| match BlockStorage::open(disk.clone(), area) {
        Ok((storage, _)) => storage,
        Err(e) => panic!("ledger: journal area {}: {e}", area.tag),
    };
    let (node_storage, ledger_storage) = (open(areas::NODE_JOURNAL), open(areas::LEDGER_JOURNAL));
    let booted = match ppn_tcb_core::boot(
        node_storage,
        ledger_storage,
        &Roots::default(),
        Platform::Sel4Microkit,
        env!("CARGO_PKG_VERSION"),
        entropy,
    ) {
        Ok(b) => b,
        Err(e) => panic!("ledger: cannot boot: {e}"),
    };
    let r = &booted.report;
    debug_println!(
        "ledger: ready: boot {}, {}; ledger journal: {} records replayed, {} bytes cut; clock {} s",
        r.boot_count,
        if r.created_identity { "new identity from virtio-rng" } else { "identity from the disk" },
        r.ledger.records,
        r.ledger.truncated_bytes,
        clock.now_unix_s(),
    );
    let core = match open_rng() {
        Ok(rng) => booted.core.with_entropy(alloc::boxed::Box::new(RngEntropy(rng))),
        Err(e) => {
            debug_println!("ledger: no entropy source for pairing ({e:?}); pairing is refused");
            booted.core
        }
    };
    // The lender service is the lender PD's; this PD answers its ledger-port calls. The attest
    // service is the attest PD's, and the attestation key waits here for its one port call.
    let mut core = core.with_lender_elsewhere();
    let attester = core.hand_off_attester();
    LedgerPd {
        core,
        attester,
        _node_journal: booted.node_journal,
        clock,
        // SAFETY: REQUEST_BUFFER_VADDR is this PD's read-write mapping of link_ledger_buffer,
        // buffer::SIZE bytes (ppn-layout, checked against the SDF).
        buffer: unsafe { RequestBuffer::new(lay::REQUEST_BUFFER_VADDR) },
        // SAFETY: LENDER_BUFFER_VADDR is this PD's read-write mapping of lender_ledger_buffer,
        // ledger_port::BUFFER_SIZE bytes (ppn-layout, checked against the SDF).
        port: unsafe { PortBuffer::new(lay::LENDER_BUFFER_VADDR) },
        // SAFETY: ATTEST_BUFFER_VADDR is this PD's read-write mapping of attest_ledger_buffer,
        // ledger_port::BUFFER_SIZE bytes (ppn-layout, checked against the SDF).
        attest_port: unsafe { PortBuffer::new(lay::ATTEST_BUFFER_VADDR) },
        request: vec![0u8; buffer::FRAME_CAPACITY],
        response: vec![0u8; MAX_FRAME_LEN],
        started_ms: timer::uptime_ms(),
    }
}

struct LedgerPd {
    /// The node and ledger cores behind the same dispatch as the hosted TCB.
    core: TcbCore<Storage>,
    /// The attestation key until the attest PD has asked for it; `None` afterwards.
    attester: Option<ppn_attest::Attester>,
    /// The node journal stays open: it is the identity's home.
    _node_journal: Journal<Storage>,
    clock: rtc::Clock,
    buffer: RequestBuffer,
    /// The lender's ledger port.
    port: PortBuffer,
    /// The attest PD's ledger port.
    attest_port: PortBuffer,
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
            Ok(len) => {
                self.core.handle_frame(&self.request[..len], &mut self.response, uptime, self.clock.now_unix_s())
            }
            Err(_) => self.core.refuse(0, "request length exceeds the frame buffer", &mut self.response),
        };
        if self.buffer.write_frame(&self.response[..n]).is_err() {
            debug_println!("ledger: response frame too long for the buffer");
        }
    }
}

impl LedgerPd {
    /// Answers one ledger-port call from `caller` on its own page: the request is copied out of
    /// the shared page before it is decoded, the reply written back. The reply may hold the
    /// attestation key (the attest PD's one `AttestKey` call), so this PD's copy is wiped.
    fn handle_port(&mut self, caller: Caller) {
        let page = match caller {
            Caller::Lender => self.port,
            Caller::Attest => self.attest_port,
        };
        let mut request = [0u8; ledger_port::MAX_MESSAGE];
        let n = page.read(&mut request);
        let mut reply = Zeroizing::new([0u8; ledger_port::MAX_MESSAGE]);
        let now = self.clock.now_unix_s();
        let len = ppn_tcb_core::remote::serve(
            self.core.ledger_mut(),
            caller,
            &mut self.attester,
            now,
            &request[..n],
            &mut reply[..],
        );
        page.write(&reply[..len]);
    }
}

impl Handler for LedgerPd {
    type Error = Infallible;

    /// `link` calls with a request frame; `lender` and `attest` with a ledger-port request, each
    /// on its own channel and page. A call on any other channel, or with another's label, is
    /// refused with nothing read or written.
    fn protected(&mut self, channel: Channel, msg_info: MessageInfo) -> Result<MessageInfo, Self::Error> {
        if channel == LINK && msg_info.label() == buffer::CALL_FRAME {
            self.handle_buffer();
            return Ok(MessageInfo::new(buffer::REPLY_FRAME, 0));
        }
        let caller = if channel == LENDER {
            Some(Caller::Lender)
        } else if channel == ATTEST {
            Some(Caller::Attest)
        } else {
            None
        };
        if let Some(caller) = caller
            && msg_info.label() == ledger_port::CALL_PORT
        {
            self.handle_port(caller);
            return Ok(MessageInfo::new(ledger_port::REPLY_PORT, 0));
        }
        Ok(MessageInfo::new(buffer::REPLY_NONE, 0))
    }

    /// The rng and the disk are polled: their interrupts are acknowledged and otherwise ignored.
    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        for irq in [RNG_IRQ, BLK_IRQ] {
            if channels.contains(irq) {
                irq.irq_ack().ok();
            }
        }
        Ok(())
    }
}
