//! A PD's virtio-blk disk: `virtio-drivers`' blk driver on one virtio-mmio transport, its
//! virtqueue and sector buffers in the PD's own DMA region (the `Hal` a PD makes with
//! [`crate::dma_hal!`]), as a [`BlockDevice`] for the journals (`ppn_journal::block`). The
//! ledger and lender PDs each link their own and reach only their own device. Requests are
//! polled: a journal write returns only once the device has completed it, and `flush` once it
//! is durable.

use core::ptr::NonNull;
use ppn_journal::block::BlockDevice;
use ppn_layout::qemu_virt;
use virtio_drivers::Hal;
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

/// A virtio-blk disk over the DMA `Hal` `H`.
pub struct Disk<H: Hal> {
    blk: VirtIOBlk<H, MmioTransport<'static>>,
}

impl<H: Hal> core::fmt::Debug for Disk<H> {
    fn fmt(&self, f: &mut core::fmt::Formatter<'_>) -> core::fmt::Result {
        f.debug_struct("Disk").field("sectors", &self.blk.capacity()).finish()
    }
}

/// Why the disk could not be brought up.
#[derive(Debug)]
pub enum DiskError {
    #[allow(dead_code, reason = "printed through Debug")]
    NoDevice(virtio_drivers::transport::mmio::MmioError),
    #[allow(dead_code, reason = "printed through Debug")]
    Init(virtio_drivers::Error),
    ReadOnly,
}

impl<H: Hal> Disk<H> {
    /// Brings up the disk whose virtio-mmio registers this PD maps at `regs_vaddr`.
    ///
    /// # Safety
    /// Call once per device. `regs_vaddr` must be this PD's uncached mapping of the disk's
    /// virtio-mmio registers for the program's life, and `H`'s DMA region must be initialised
    /// with its physical address (ppn-layout, checked against the SDF by `ppn sdf check`).
    pub unsafe fn new(regs_vaddr: u64) -> Result<Self, DiskError> {
        let header = NonNull::new(regs_vaddr as *mut VirtIOHeader).expect("nonzero vaddr");
        // SAFETY: the caller guarantees `regs_vaddr` maps the disk's registers
        // (VIRTIO_MMIO_SIZE bytes at the transport's offset in its page) for the program's life,
        // and this is the only transport made over them.
        let transport =
            unsafe { MmioTransport::new(header, qemu_virt::VIRTIO_MMIO_SIZE as usize) }.map_err(DiskError::NoDevice)?;
        let blk = VirtIOBlk::<H, _>::new(transport).map_err(DiskError::Init)?;
        if blk.readonly() {
            return Err(DiskError::ReadOnly);
        }
        Ok(Self { blk })
    }
}

impl<H: Hal> BlockDevice for Disk<H> {
    type Error = virtio_drivers::Error;

    fn sectors(&mut self) -> Result<u64, Self::Error> {
        Ok(self.blk.capacity())
    }

    fn read(&mut self, sector: u64, buf: &mut [u8]) -> Result<(), Self::Error> {
        self.blk.read_blocks(sector as usize, buf)
    }

    fn write(&mut self, sector: u64, buf: &[u8]) -> Result<(), Self::Error> {
        self.blk.write_blocks(sector as usize, buf)
    }

    fn flush(&mut self) -> Result<(), Self::Error> {
        self.blk.flush()
    }
}
