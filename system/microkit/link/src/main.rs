//! The `link` protection domain: the byte stream to the untrusted proxy. It drives the
//! virtio-console (virtio-mmio transport from `ppn-layout`), COBS-deframes the stream, puts each
//! request frame into the buffer it shares with `ledger`, calls `ledger` (a protected procedure
//! call), and COBS-frames the reply back onto the console. It holds no secrets: a stream error
//! (bad COBS, a chunk over the frame limit) is answered by `link` itself with a `BadFrame` error
//! frame, as the hosted TCB answers it.
//!
//! `link` routes each frame by the service in its header (`ppn_layout::ROUTES`): lender requests
//! to `lender` (through `link_lender_buffer`), attest requests to `attest` (through
//! `link_attest_buffer`), everything else to `ledger`, which also answers what no PD serves with
//! `NotImplemented`, like the hosted TCB, and every frame whose header does not parse with
//! `BadFrame`.
#![no_std]
#![no_main]

extern crate alloc;

use alloc::vec;
use alloc::vec::Vec;
use core::ptr::NonNull;
use ppn_layout::{buffer, link as lay, qemu_virt};
use ppn_microkit_support::{DmaPool, RequestBuffer, dma_hal};
use ppn_wire::stream::{self, Deframer, MAX_ENCODED_LEN};
use ppn_wire::{ErrorCode, Header, MAX_FRAME_LEN, Response, Service};
use sel4_microkit::{Channel, ChannelSet, Handler, Infallible, MessageInfo, debug_println, protection_domain};
use virtio_drivers::device::console::VirtIOConsole;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

/// Patched by Microkit with the physical address of `link_console_dma` (SDF `setvar`).
#[unsafe(no_mangle)]
#[used]
static mut ppn_console_dma_paddr: u64 = 0;

static CONSOLE_DMA: DmaPool = DmaPool::new(lay::CONSOLE_DMA_VADDR, lay::CONSOLE_DMA_SIZE);
dma_hal!(ConsoleHal, CONSOLE_DMA);

const LEDGER: Channel = Channel::new(lay::LEDGER_CHANNEL as usize);
const CONSOLE_IRQ: Channel = Channel::new(lay::CONSOLE_IRQ as usize);

/// The deframer holds a whole COBS chunk (over 16 KiB): more than link's stack, so it is static.
static mut DEFRAMER: Deframer = Deframer::new();

type Console = VirtIOConsole<ConsoleHal, MmioTransport<'static>>;

#[protection_domain(heap_size = 0x40000)]
#[allow(
    clippy::deref_addrof,
    reason = "`&mut DEFRAMER` would be a reference to a static mut (denied); going through a raw pointer is the way"
)]
fn init() -> Link {
    // SAFETY: Microkit patched the symbol before the PD started; nothing writes it afterwards.
    CONSOLE_DMA.init(unsafe { core::ptr::read_volatile(&raw const ppn_console_dma_paddr) });
    let header = NonNull::new(lay::CONSOLE_REGS_VADDR as *mut VirtIOHeader).expect("nonzero vaddr");
    // SAFETY: CONSOLE_REGS_VADDR is this PD's uncached mapping of the console's virtio-mmio
    // registers (VIRTIO_MMIO_SIZE bytes at the transport's offset in its page; ppn-layout,
    // checked against the SDF), used only through this transport for the program's life.
    let transport = match unsafe { MmioTransport::new(header, qemu_virt::VIRTIO_MMIO_SIZE as usize) } {
        Ok(t) => t,
        Err(e) => panic!("link: no virtio-mmio device on the console transport: {e:?}"),
    };
    let console = match VirtIOConsole::<ConsoleHal, _>::new(transport) {
        Ok(c) => c,
        Err(e) => panic!("link: virtio-console init failed: {e:?}"),
    };
    debug_println!("link: virtio-console ready on transport {}", lay::CONSOLE.transport().unwrap_or_default());
    let routes = ppn_layout::ROUTES
        .iter()
        .filter_map(|r| {
            let vaddr = ppn_layout::mapping("link", r.buffer.name)?.vaddr;
            // SAFETY: vaddr is link's read-write mapping of the route's buffer region, of
            // buffer::SIZE bytes (ppn-layout's tests check every route's buffer; `ppn sdf check`
            // checks the SDF against the layout).
            let buffer = unsafe { RequestBuffer::new(vaddr) };
            Some((r.service, Callee { name: r.pd.name, channel: Channel::new(r.link_channel as usize), buffer }))
        })
        .collect();
    Link {
        console,
        // SAFETY: init runs once, before any handler, in this single-threaded PD: this is the only
        // reference to DEFRAMER ever made.
        deframer: unsafe { &mut *(&raw mut DEFRAMER) },
        ledger: Callee {
            name: "ledger",
            channel: LEDGER,
            // SAFETY: LEDGER_BUFFER_VADDR is this PD's read-write mapping of link_ledger_buffer,
            // buffer::SIZE bytes (ppn-layout, checked against the SDF).
            buffer: unsafe { RequestBuffer::new(lay::LEDGER_BUFFER_VADDR) },
        },
        routes,
        input: Vec::with_capacity(4096),
        response: vec![0u8; MAX_FRAME_LEN],
        encoded: vec![0u8; MAX_ENCODED_LEN],
    }
}

/// A service PD as `link` calls it.
#[derive(Debug, Clone, Copy)]
struct Callee {
    name: &'static str,
    channel: Channel,
    buffer: RequestBuffer,
}

struct Link {
    console: Console,
    deframer: &'static mut Deframer,
    /// Where every frame no route claims goes.
    ledger: Callee,
    /// The layout's routes.
    routes: Vec<(Service, Callee)>,
    input: Vec<u8>,
    response: Vec<u8>,
    encoded: Vec<u8>,
}

impl core::fmt::Debug for Link {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Link").finish_non_exhaustive()
    }
}

impl Link {
    /// Sends one request frame to the PD that serves its service (`ppn_layout::ROUTES`; `ledger`
    /// for anything else) and returns the length of the response it wrote into `self.response`.
    fn call(&mut self, frame: &[u8]) -> usize {
        let service = Header::parse(frame).map(|h| h.kind.service()).ok();
        let callee = service.and_then(|s| self.routes.iter().find(|(r, _)| *r == s)).map_or(self.ledger, |&(_, c)| c);
        let Callee { name, channel, buffer: buf } = callee;
        if buf.write_frame(frame).is_err() {
            return self.error_frame("request frame exceeds the frame buffer");
        }
        let reply = channel.pp_call(MessageInfo::new(buffer::CALL_FRAME, 0));
        if reply.label() != buffer::REPLY_FRAME {
            return self.error_frame(&alloc::format!("the {name} PD refused the call"));
        }
        // Copy out before framing: the callee could still be writing (it cannot, it replied;
        // but link treats the buffer as shared all the same).
        match buf.read_frame(&mut self.response) {
            Ok(n) => n,
            Err(_) => self.error_frame(&alloc::format!("the {name} PD's response exceeds the frame buffer")),
        }
    }

    fn error_frame(&mut self, detail: &str) -> usize {
        ppn_wire::encode_response(0, &Response::error(ErrorCode::BadFrame, detail), &mut self.response).unwrap_or(0)
    }

    fn send(&mut self, len: usize) {
        let Ok(n) = stream::encode(&self.response[..len], &mut self.encoded) else {
            debug_println!("link: response does not fit a COBS chunk");
            return;
        };
        if let Err(e) = self.console.send_bytes(&self.encoded[..n]) {
            debug_println!("link: console send failed: {e:?}");
        }
    }

    /// Drains the console's received bytes through the deframer.
    fn pump(&mut self) {
        loop {
            self.input.clear();
            while self.input.len() < self.input.capacity() {
                match self.console.recv(true) {
                    Ok(Some(b)) => self.input.push(b),
                    Ok(None) => break,
                    Err(e) => {
                        debug_println!("link: console receive failed: {e:?}");
                        break;
                    }
                }
            }
            if self.input.is_empty() {
                return;
            }
            let input = core::mem::take(&mut self.input);
            let mut rest = &input[..];
            while !rest.is_empty() {
                let (used, event) = self.deframer.push(rest);
                rest = &rest[used..];
                let len = match event {
                    None => continue,
                    Some(Ok(frame)) => {
                        let frame: Vec<u8> = frame.to_vec();
                        self.call(&frame)
                    }
                    Some(Err(e)) => {
                        let detail = alloc::format!("{e}");
                        self.error_frame(&detail)
                    }
                };
                self.send(len);
            }
            self.input = input;
        }
    }
}

impl Handler for Link {
    type Error = Infallible;

    fn notified(&mut self, channels: ChannelSet) -> Result<(), Self::Error> {
        if channels.contains(CONSOLE_IRQ) {
            if let Err(e) = self.console.ack_interrupt() {
                debug_println!("link: console interrupt: {e:?}");
            }
            self.pump();
            CONSOLE_IRQ.irq_ack().ok();
        }
        Ok(())
    }
}
