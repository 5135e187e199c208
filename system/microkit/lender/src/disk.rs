//! The lender's own disk: `virtio-drivers`' virtio-blk driver on the lender disk's virtio-mmio
//! transport (`ppn_layout::devices::LENDER_BLK`), its virtqueue and sector buffers in the
//! lender's own DMA region (`lender_blk_dma`), as a [`BlockDevice`] for the lender journal
//! (`ppn_journal::block`). The same driver as the ledger PD's `disk.rs`, over the lender's
//! layout constants: each PD links its own copy and reaches only its own device. Requests are polled: a journal
//! write returns only once the device has completed it, and `flush` once it is durable.

use core::ptr::NonNull;
use ppn_journal::block::BlockDevice;
use ppn_layout::{lender as lay, qemu_virt};
use ppn_microkit_support::{DmaPool, dma_hal};
use virtio_drivers::device::blk::VirtIOBlk;
use virtio_drivers::transport::mmio::{MmioTransport, VirtIOHeader};

static BLK_DMA: DmaPool = DmaPool::new(lay::BLK_DMA_VADDR, lay::BLK_DMA_SIZE);
dma_hal!(BlkHal, BLK_DMA);

/// The lender's virtio-blk disk.
pub struct Disk {
    blk: VirtIOBlk<BlkHal, MmioTransport<'static>>,
}

impl core::fmt::Debug for Disk {
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

impl Disk {
    /// Brings up the disk on the layout's transport, its DMA region at physical `dma_paddr`.
    ///
    /// # Safety
    /// Call once. `lay::BLK_REGS_VADDR` must be this PD's uncached mapping of the disk's
    /// virtio-mmio registers and `lay::BLK_DMA_VADDR` its mapping of `lender_blk_dma`, whose
    /// physical address is `dma_paddr` (ppn-layout, checked against the SDF by `ppn sdf check`).
    pub unsafe fn new(dma_paddr: u64) -> Result<Self, DiskError> {
        BLK_DMA.init(dma_paddr);
        let header = NonNull::new(lay::BLK_REGS_VADDR as *mut VirtIOHeader).expect("nonzero vaddr");
        // SAFETY: the caller guarantees BLK_REGS_VADDR maps the disk's registers
        // (VIRTIO_MMIO_SIZE bytes at the transport's offset in its page) for the program's life,
        // and this is the only transport made over them.
        let transport =
            unsafe { MmioTransport::new(header, qemu_virt::VIRTIO_MMIO_SIZE as usize) }.map_err(DiskError::NoDevice)?;
        let blk = VirtIOBlk::<BlkHal, _>::new(transport).map_err(DiskError::Init)?;
        if blk.readonly() {
            return Err(DiskError::ReadOnly);
        }
        Ok(Self { blk })
    }
}

impl BlockDevice for Disk {
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
