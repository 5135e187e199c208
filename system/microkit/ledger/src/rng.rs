//! A minimal virtio-rng driver on virtio-mmio (legacy or modern transport), one descriptor in
//! the ledger's one-page secret DMA region (`ledger_rng_dma`): `virtio-drivers` allocates whole
//! pages per ring, more than the page the layout gives. Polled; the interrupt is not used.

use core::ptr::{read_volatile, write_volatile};
use core::sync::atomic::{Ordering, fence};

const MAGIC: u32 = 0x7472_6976; // "virt"
const DEVICE_ID_ENTROPY: u32 = 4;

// Register offsets (virtio 1.2 section 4.2.2 and 4.2.4 for legacy).
const R_MAGIC: usize = 0x000;
const R_VERSION: usize = 0x004;
const R_DEVICE_ID: usize = 0x008;
const R_DEVICE_FEATURES_SEL: usize = 0x014;
const R_DRIVER_FEATURES: usize = 0x020;
const R_DRIVER_FEATURES_SEL: usize = 0x024;
const R_GUEST_PAGE_SIZE: usize = 0x028;
const R_QUEUE_SEL: usize = 0x030;
const R_QUEUE_NUM_MAX: usize = 0x034;
const R_QUEUE_NUM: usize = 0x038;
const R_QUEUE_ALIGN: usize = 0x03c;
const R_QUEUE_PFN: usize = 0x040;
const R_QUEUE_READY: usize = 0x044;
const R_QUEUE_NOTIFY: usize = 0x050;
const R_INTERRUPT_ACK: usize = 0x064;
const R_INTERRUPT_STATUS: usize = 0x060;
const R_STATUS: usize = 0x070;
const R_QUEUE_DESC_LOW: usize = 0x080;
const R_QUEUE_DESC_HIGH: usize = 0x084;
const R_QUEUE_DRIVER_LOW: usize = 0x090;
const R_QUEUE_DRIVER_HIGH: usize = 0x094;
const R_QUEUE_DEVICE_LOW: usize = 0x0a0;
const R_QUEUE_DEVICE_HIGH: usize = 0x0a4;

const S_ACKNOWLEDGE: u32 = 1;
const S_DRIVER: u32 = 2;
const S_DRIVER_OK: u32 = 4;
const S_FEATURES_OK: u32 = 8;

// Offsets in the DMA page. Legacy puts the available ring right after the descriptor table and
// the used ring at the next QUEUE_ALIGN boundary; modern takes the same addresses explicitly.
const DESC: usize = 0;
const AVAIL: usize = 16;
const QUEUE_ALIGN: usize = 64;
const USED: usize = 64;
const BUF: usize = 1024;
const BUF_LEN: usize = 64;

/// Why entropy could not be read.
#[derive(Debug, Clone, Copy)]
pub enum RngError {
    #[allow(dead_code, reason = "printed through Debug")]
    NoDevice {
        magic: u32,
        device_id: u32,
    },
    QueueUnavailable,
    FeaturesRefused,
    Timeout,
}

/// The entropy device.
#[derive(Debug)]
pub struct Rng {
    regs: *mut u32,
    dma: *mut u8,
    dma_paddr: u64,
    next_avail: u16,
}

impl Rng {
    /// Initialises the device.
    ///
    /// # Safety
    /// `regs` must be the mapping of the device's virtio-mmio registers, `dma` the PD's private
    /// mapping of one page whose physical address is `dma_paddr`, both for the program's life.
    pub unsafe fn new(regs: u64, dma: u64, dma_paddr: u64) -> Result<Self, RngError> {
        let rng = Self { regs: regs as *mut u32, dma: dma as *mut u8, dma_paddr, next_avail: 0 };
        let magic = rng.read(R_MAGIC);
        let device_id = rng.read(R_DEVICE_ID);
        if magic != MAGIC || device_id != DEVICE_ID_ENTROPY {
            return Err(RngError::NoDevice { magic, device_id });
        }
        let legacy = rng.read(R_VERSION) == 1;
        rng.write(R_STATUS, 0);
        // A reset restarts the device's ring indices at 0; an earlier driver's rings are still in
        // the DMA page (the first boot reads the seed through one, then pairing opens another),
        // and a stale used index equal to the next one would hide the first completion.
        for off in 0..BUF + BUF_LEN {
            rng.dma_write::<u8>(off, 0);
        }
        fence(Ordering::SeqCst);
        rng.write(R_STATUS, S_ACKNOWLEDGE);
        rng.write(R_STATUS, S_ACKNOWLEDGE | S_DRIVER);
        // Features: none for legacy; VIRTIO_F_VERSION_1 (bit 32) for modern.
        rng.write(R_DEVICE_FEATURES_SEL, 0);
        rng.write(R_DRIVER_FEATURES_SEL, 0);
        rng.write(R_DRIVER_FEATURES, 0);
        if !legacy {
            rng.write(R_DRIVER_FEATURES_SEL, 1);
            rng.write(R_DRIVER_FEATURES, 1);
            rng.write(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | S_FEATURES_OK);
            if rng.read(R_STATUS) & S_FEATURES_OK == 0 {
                return Err(RngError::FeaturesRefused);
            }
        }
        rng.write(R_QUEUE_SEL, 0);
        if rng.read(R_QUEUE_NUM_MAX) == 0 {
            return Err(RngError::QueueUnavailable);
        }
        rng.write(R_QUEUE_NUM, 1);
        if legacy {
            rng.write(R_GUEST_PAGE_SIZE, 4096);
            rng.write(R_QUEUE_ALIGN, QUEUE_ALIGN as u32);
            rng.write(R_QUEUE_PFN, (dma_paddr >> 12) as u32);
        } else {
            let split = |a: u64| (a as u32, (a >> 32) as u32);
            let (lo, hi) = split(dma_paddr + DESC as u64);
            rng.write(R_QUEUE_DESC_LOW, lo);
            rng.write(R_QUEUE_DESC_HIGH, hi);
            let (lo, hi) = split(dma_paddr + AVAIL as u64);
            rng.write(R_QUEUE_DRIVER_LOW, lo);
            rng.write(R_QUEUE_DRIVER_HIGH, hi);
            let (lo, hi) = split(dma_paddr + USED as u64);
            rng.write(R_QUEUE_DEVICE_LOW, lo);
            rng.write(R_QUEUE_DEVICE_HIGH, hi);
            rng.write(R_QUEUE_READY, 1);
        }
        let ok = if legacy { S_DRIVER_OK } else { S_DRIVER_OK | S_FEATURES_OK };
        rng.write(R_STATUS, S_ACKNOWLEDGE | S_DRIVER | ok);
        Ok(rng)
    }

    fn read(&self, off: usize) -> u32 {
        // SAFETY: `off` is a register offset below 0x100, inside the device's register window
        // (see `new`); device registers are read with volatile 32-bit loads.
        unsafe { read_volatile(self.regs.byte_add(off)) }
    }

    fn write(&self, off: usize, v: u32) {
        // SAFETY: as in `read`.
        unsafe { write_volatile(self.regs.byte_add(off), v) }
    }

    fn dma_write<T>(&self, off: usize, v: T) {
        // SAFETY: every offset used is below BUF + BUF_LEN < 4096, inside the DMA page, and
        // aligned for T (desc 16-aligned, rings 2/4-aligned; bytes anywhere).
        unsafe { write_volatile(self.dma.add(off) as *mut T, v) }
    }

    fn dma_read<T: Copy>(&self, off: usize) -> T {
        // SAFETY: as in `dma_write`.
        unsafe { read_volatile(self.dma.add(off) as *const T) }
    }

    /// Fills `out` with bytes from the device.
    pub fn fill(&mut self, out: &mut [u8]) -> Result<(), RngError> {
        let mut done = 0;
        while done < out.len() {
            // Descriptor 0: the buffer, device-writable (VIRTQ_DESC_F_WRITE = 2).
            self.dma_write::<u64>(DESC, self.dma_paddr + BUF as u64);
            self.dma_write::<u32>(DESC + 8, BUF_LEN as u32);
            self.dma_write::<u16>(DESC + 12, 2);
            self.dma_write::<u16>(DESC + 14, 0);
            let used_before: u16 = self.dma_read(USED + 2);
            self.dma_write::<u16>(AVAIL + 4, 0); // ring[0] = descriptor 0
            fence(Ordering::SeqCst);
            self.next_avail = self.next_avail.wrapping_add(1);
            self.dma_write::<u16>(AVAIL + 2, self.next_avail);
            fence(Ordering::SeqCst);
            self.write(R_QUEUE_NOTIFY, 0);
            let mut spins = 0u64;
            loop {
                fence(Ordering::SeqCst);
                let used: u16 = self.dma_read(USED + 2);
                if used != used_before {
                    break;
                }
                spins += 1;
                if spins > 200_000_000 {
                    return Err(RngError::Timeout);
                }
                core::hint::spin_loop();
            }
            let status = self.read(R_INTERRUPT_STATUS);
            self.write(R_INTERRUPT_ACK, status);
            let len = (self.dma_read::<u32>(USED + 4 + 4) as usize).min(BUF_LEN);
            let n = len.min(out.len() - done);
            for i in 0..n {
                out[done + i] = self.dma_read::<u8>(BUF + i);
                self.dma_write::<u8>(BUF + i, 0);
            }
            done += n;
        }
        Ok(())
    }
}
