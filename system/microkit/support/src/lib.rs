//! What the PPN Fabric protection domains share:
//! - [`DmaPool`] and [`dma_hal!`]: a `virtio-drivers` [`Hal`](virtio_drivers::Hal) over one
//!   Microkit DMA region (virtual address from `ppn-layout`, physical address from the symbol
//!   Microkit patches), with bounce buffers for memory outside the region;
//! - [`disk`]: a virtio-blk disk as a journal `BlockDevice`;
//! - [`timer`]: the ARM generic timer (uptime);
//! - [`RequestBuffer`]: the request/response buffer a service PD shares with `link`
//!   (layout: `ppn_layout::buffer`), accessed only by volatile copies, and [`serve_frame`], a
//!   service PD's answer to one call;
//! - [`PortBuffer`] and [`PortCall`]: a ledger port's page (`ppn_layout::ledger_port`) and the
//!   protected procedure call to `ledger` across it.
#![no_std]

extern crate alloc;

use core::ptr::NonNull;
use core::sync::atomic::{AtomicU64, Ordering};
use ppn_layout::{PAGE_SIZE, buffer};

pub use virtio_drivers;

/// Pages a pool can manage (one bit each).
pub const MAX_POOL_PAGES: usize = 64;

/// A page allocator over one DMA region: a bitmap of used pages. The PDs are single threaded
/// (Microkit runs a PD's handlers one at a time), so relaxed atomics are enough.
#[derive(Debug)]
pub struct DmaPool {
    vaddr: u64,
    pages: usize,
    paddr: AtomicU64,
    used: AtomicU64,
}

impl DmaPool {
    /// A pool over the region at `vaddr` of `size` bytes. Its physical address is set by
    /// [`DmaPool::init`] before first use.
    pub const fn new(vaddr: u64, size: u64) -> Self {
        let pages = (size / PAGE_SIZE) as usize;
        assert!(pages <= MAX_POOL_PAGES, "a DMA pool manages at most 64 pages");
        Self { vaddr, pages, paddr: AtomicU64::new(0), used: AtomicU64::new(0) }
    }

    /// Sets the region's physical address (from the Microkit-patched symbol).
    pub fn init(&self, paddr: u64) {
        self.paddr.store(paddr, Ordering::Relaxed);
    }

    fn paddr(&self) -> u64 {
        let p = self.paddr.load(Ordering::Relaxed);
        assert!(p != 0, "DMA pool used before init (the setvar symbol was not patched)");
        p
    }

    /// Allocates `n` contiguous zeroed pages; `None` when the region is full.
    pub fn alloc(&self, n: usize) -> Option<(u64, NonNull<u8>)> {
        if n == 0 || n > self.pages {
            return None;
        }
        let used = self.used.load(Ordering::Relaxed);
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        for first in 0..=(self.pages - n) {
            if used & (mask << first) == 0 {
                self.used.store(used | (mask << first), Ordering::Relaxed);
                let offset = first as u64 * PAGE_SIZE;
                let vaddr = (self.vaddr + offset) as *mut u8;
                // SAFETY: the pages [first, first + n) lie inside the DMA region, which Microkit
                // maps read-write at `self.vaddr` for this PD only; the bitmap says no other
                // allocation holds them, so writing them cannot alias a live reference.
                unsafe { core::ptr::write_bytes(vaddr, 0, n * PAGE_SIZE as usize) };
                return Some((self.paddr() + offset, NonNull::new(vaddr)?));
            }
        }
        None
    }

    /// Frees pages returned by [`DmaPool::alloc`].
    pub fn free(&self, paddr: u64, n: usize) {
        let first = ((paddr - self.paddr()) / PAGE_SIZE) as usize;
        let mask = if n == 64 { u64::MAX } else { (1u64 << n) - 1 };
        let used = self.used.load(Ordering::Relaxed);
        self.used.store(used & !(mask << first), Ordering::Relaxed);
    }

    /// The virtual address of a physical address in the region.
    pub fn virt(&self, paddr: u64) -> *mut u8 {
        (self.vaddr + (paddr - self.paddr())) as *mut u8
    }
}

/// Pages needed for `len` bytes.
pub const fn pages_for(len: usize) -> usize {
    len.div_ceil(PAGE_SIZE as usize)
}

/// Defines a `virtio_drivers::Hal` named `$name` over the [`DmaPool`] `$pool`. Every buffer the
/// driver shares is bounced through the pool (the PD's other memory is not DMA-visible).
#[macro_export]
macro_rules! dma_hal {
    ($name:ident, $pool:path) => {
        #[derive(Debug)]
        pub struct $name;

        // SAFETY: `dma_alloc` returns zeroed, page-aligned pages of the PD's DMA region that no
        // other allocation holds (the pool's bitmap); `share` returns the physical address of a
        // bounce copy in the same region; nothing here hands out aliasing references.
        unsafe impl $crate::virtio_drivers::Hal for $name {
            fn dma_alloc(
                pages: usize,
                _direction: $crate::virtio_drivers::BufferDirection,
            ) -> ($crate::virtio_drivers::PhysAddr, core::ptr::NonNull<u8>) {
                match $pool.alloc(pages) {
                    Some((paddr, vaddr)) => (paddr as $crate::virtio_drivers::PhysAddr, vaddr),
                    None => (0, core::ptr::NonNull::dangling()),
                }
            }

            unsafe fn dma_dealloc(
                paddr: $crate::virtio_drivers::PhysAddr,
                _vaddr: core::ptr::NonNull<u8>,
                pages: usize,
            ) -> i32 {
                $pool.free(paddr as u64, pages);
                0
            }

            unsafe fn mmio_phys_to_virt(
                _paddr: $crate::virtio_drivers::PhysAddr,
                _size: usize,
            ) -> core::ptr::NonNull<u8> {
                panic!("virtio-mmio needs no BAR translation")
            }

            unsafe fn share(
                buffer: core::ptr::NonNull<[u8]>,
                direction: $crate::virtio_drivers::BufferDirection,
            ) -> $crate::virtio_drivers::PhysAddr {
                let len = buffer.len();
                let Some((paddr, bounce)) = $pool.alloc($crate::pages_for(len)) else {
                    panic!("DMA region full: cannot bounce {} bytes", len);
                };
                if direction != $crate::virtio_drivers::BufferDirection::DeviceToDriver {
                    // SAFETY: the caller guarantees `buffer` is valid for `len` bytes and not
                    // accessed by anyone else during this call; `bounce` is `len` bytes (or more)
                    // of freshly allocated DMA pages, so the two cannot overlap.
                    unsafe { core::ptr::copy_nonoverlapping(buffer.as_ptr() as *const u8, bounce.as_ptr(), len) };
                }
                paddr as $crate::virtio_drivers::PhysAddr
            }

            unsafe fn unshare(
                paddr: $crate::virtio_drivers::PhysAddr,
                buffer: core::ptr::NonNull<[u8]>,
                direction: $crate::virtio_drivers::BufferDirection,
            ) {
                let len = buffer.len();
                if direction != $crate::virtio_drivers::BufferDirection::DriverToDevice {
                    // SAFETY: `paddr` came from `share` for this buffer, so the bounce copy at its
                    // virtual address is `len` bytes inside the DMA region; the caller guarantees
                    // `buffer` is valid for writes and not otherwise accessed during this call.
                    unsafe {
                        core::ptr::copy_nonoverlapping(
                            $pool.virt(paddr as u64) as *const u8,
                            buffer.as_ptr() as *mut u8,
                            len,
                        )
                    };
                }
                $pool.free(paddr as u64, $crate::pages_for(len));
            }
        }
    };
}

pub mod disk;

/// The ARM generic timer, read through the physical counter (Microkit's seL4 exports it to EL0).
pub mod timer {
    /// Ticks since the counter started.
    pub fn ticks() -> u64 {
        let v: u64;
        // SAFETY: reading CNTPCT_EL0 has no side effects; the Microkit kernel config exports
        // the physical counter to user level (CONFIG_EXPORT_PCNT_USER; the virtual one traps).
        unsafe { core::arch::asm!("isb", "mrs {}, cntpct_el0", out(reg) v, options(nomem, nostack)) };
        v
    }

    /// Ticks per second.
    pub fn frequency() -> u64 {
        let f: u64;
        // SAFETY: reading CNTFRQ_EL0 has no side effects and is allowed at EL0 when the counter is.
        unsafe { core::arch::asm!("mrs {}, cntfrq_el0", out(reg) f, options(nomem, nostack)) };
        f
    }

    /// Milliseconds since the counter started (the machine's boot).
    pub fn uptime_ms() -> u64 {
        let f = frequency().max(1);
        ((ticks() as u128 * 1000) / f as u128) as u64
    }
}

/// The request/response buffer shared by `link` and one service PD. The other side can rewrite
/// it at any time, so every access is a volatile copy and `len` is read exactly once.
#[derive(Debug, Clone, Copy)]
pub struct RequestBuffer {
    base: *mut u8,
}

/// Why a frame could not be read from or written to the buffer.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BufferError {
    /// `len` exceeds the frame capacity (hostile or broken writer).
    TooLong(usize),
}

impl RequestBuffer {
    /// The buffer mapped at `vaddr` (a `ppn_layout` constant), `buffer::SIZE` bytes.
    ///
    /// # Safety
    /// `vaddr` must be the PD's read-write mapping of the shared buffer region, of at least
    /// `ppn_layout::buffer::SIZE` bytes, for the whole life of the program.
    pub const unsafe fn new(vaddr: u64) -> Self {
        Self { base: vaddr as *mut u8 }
    }

    /// Reads `len` once, bounds it, and copies the frame into `out` (at least `FRAME_CAPACITY`
    /// bytes). Returns the frame's length.
    pub fn read_frame(&self, out: &mut [u8]) -> Result<usize, BufferError> {
        let mut raw = [0u8; buffer::LEN_SIZE];
        for (i, b) in raw.iter_mut().enumerate() {
            // SAFETY: LEN_OFFSET + i < buffer::SIZE, inside the mapping (see `new`).
            *b = unsafe { core::ptr::read_volatile(self.base.add(buffer::LEN_OFFSET + i)) };
        }
        let len = buffer::decode_len(raw).ok_or(BufferError::TooLong(u32::from_le_bytes(raw) as usize))?;
        let len = len.min(out.len());
        for (i, b) in out[..len].iter_mut().enumerate() {
            // SAFETY: FRAME_OFFSET + i < FRAME_OFFSET + FRAME_CAPACITY <= buffer::SIZE.
            *b = unsafe { core::ptr::read_volatile(self.base.add(buffer::FRAME_OFFSET + i)) };
        }
        Ok(len)
    }

    /// Writes `frame` and then its `len`.
    pub fn write_frame(&self, frame: &[u8]) -> Result<(), BufferError> {
        let raw = buffer::encode_len(frame.len()).ok_or(BufferError::TooLong(frame.len()))?;
        for (i, b) in frame.iter().enumerate() {
            // SAFETY: frame.len() <= FRAME_CAPACITY (checked by encode_len), so the write stays
            // inside the mapping.
            unsafe { core::ptr::write_volatile(self.base.add(buffer::FRAME_OFFSET + i), *b) };
        }
        core::sync::atomic::fence(Ordering::SeqCst);
        for (i, b) in raw.iter().enumerate() {
            // SAFETY: LEN_OFFSET + i < buffer::SIZE.
            unsafe { core::ptr::write_volatile(self.base.add(buffer::LEN_OFFSET + i), *b) };
        }
        Ok(())
    }
}

/// A ledger port's buffer (`ppn_layout::ledger_port`), shared by `ledger` and one caller
/// (`lender` or `attest`): one message of at most `MAX_MESSAGE` bytes at offset 0, its length in
/// its own header. The other side can rewrite it at any time, so every access is a volatile copy
/// into or out of the PD's own memory, and only the copy is decoded.
#[derive(Debug, Clone, Copy)]
pub struct PortBuffer {
    base: *mut u8,
}

impl PortBuffer {
    /// The buffer mapped at `vaddr` (a `ppn_layout` constant).
    ///
    /// # Safety
    /// `vaddr` must be the PD's read-write mapping of a ledger port's buffer, of at least
    /// `ppn_layout::ledger_port::BUFFER_SIZE` bytes, for the whole life of the program.
    pub const unsafe fn new(vaddr: u64) -> Self {
        Self { base: vaddr as *mut u8 }
    }

    /// Copies the first `out.len()` bytes (at most `MAX_MESSAGE`) out of the buffer.
    pub fn read(&self, out: &mut [u8]) -> usize {
        let n = out.len().min(ppn_layout::ledger_port::MAX_MESSAGE);
        for (i, b) in out[..n].iter_mut().enumerate() {
            // SAFETY: i < MAX_MESSAGE <= BUFFER_SIZE, inside the mapping (see `new`).
            *b = unsafe { core::ptr::read_volatile(self.base.add(i)) };
        }
        n
    }

    /// Copies `msg` (at most `MAX_MESSAGE` bytes; more is cut) into the buffer; the rest of the
    /// message area is zeroed, so no earlier message's tail is left in it.
    pub fn write(&self, msg: &[u8]) {
        let max = ppn_layout::ledger_port::MAX_MESSAGE;
        for i in 0..max {
            let b = msg.get(i).copied().unwrap_or(0);
            // SAFETY: i < MAX_MESSAGE <= BUFFER_SIZE, inside the mapping (see `new`).
            unsafe { core::ptr::write_volatile(self.base.add(i), b) };
        }
        core::sync::atomic::fence(Ordering::SeqCst);
    }

    /// Zeroes the message area: what the attest PD does once it has copied the attestation key
    /// out of its port's page.
    pub fn wipe(&self) {
        self.write(&[]);
    }
}

/// A ledger port: its page, and the protected procedure call to `ledger` on `channel`.
#[derive(Debug)]
pub struct PortCall {
    buffer: PortBuffer,
    channel: sel4_microkit::Channel,
}

impl PortCall {
    pub const fn new(buffer: PortBuffer, channel: sel4_microkit::Channel) -> Self {
        Self { buffer, channel }
    }

    pub fn buffer(&self) -> &PortBuffer {
        &self.buffer
    }
}

impl ppn_tcb_core::remote::PortTransport for PortCall {
    fn call(&self, request: &[u8], reply: &mut [u8]) -> Result<usize, alloc::string::String> {
        use ppn_layout::ledger_port;
        self.buffer.write(request);
        let answer = self.channel.pp_call(sel4_microkit::MessageInfo::new(ledger_port::CALL_PORT, 0));
        if answer.label() != ledger_port::REPLY_PORT {
            return Err(alloc::format!("the ledger PD refused the port call (label {})", answer.label()));
        }
        // Copied into our own memory before it is decoded.
        Ok(self.buffer.read(reply))
    }
}

/// A service PD's answer to one call from `link`: copies the request frame out of `buffer` into
/// `request` (the PD's own memory, at least `FRAME_CAPACITY` bytes), decodes it, answers it with
/// `answer`, and writes the response frame (encoded in `response`, at least `MAX_FRAME_LEN`
/// bytes) back. A frame that does not decode is answered `BadFrame` without reaching `answer`.
/// `pd` names the PD in the one error it cannot send (a response too long for the buffer).
pub fn serve_frame(
    buffer: &RequestBuffer,
    request: &mut [u8],
    response: &mut [u8],
    pd: &str,
    answer: impl FnOnce(&ppn_wire::Request) -> ppn_wire::Response,
) {
    use ppn_wire::{ErrorCode, Header, Response};
    let (id, reply) = match buffer.read_frame(request) {
        Ok(len) => {
            let frame = &request[..len];
            match ppn_wire::decode_request(frame) {
                Ok((id, r)) => (id, answer(&r)),
                Err(e) => {
                    let id = Header::parse(frame).map(|h| h.request_id).unwrap_or(0);
                    (id, Response::error(ErrorCode::BadFrame, &alloc::format!("{e}")))
                }
            }
        }
        Err(_) => (0, Response::error(ErrorCode::BadFrame, "request length exceeds the frame buffer")),
    };
    let n = match ppn_wire::encode_response(id, &reply, response) {
        Ok(n) => n,
        Err(e) => {
            let internal = Response::error(ErrorCode::Internal, &alloc::format!("{e}"));
            ppn_wire::encode_response(id, &internal, response).unwrap_or(0)
        }
    };
    if buffer.write_frame(&response[..n]).is_err() {
        sel4_microkit::debug_println!("{pd}: response frame too long for the buffer");
    }
}
