//! The ledger's own disk: the shared virtio-blk driver (`ppn_microkit_support::disk`) over the
//! ledger's transport and its own DMA region (`ledger_blk_dma`).

use ppn_layout::ledger as lay;
use ppn_microkit_support::{DmaPool, dma_hal};

pub use ppn_microkit_support::disk::DiskError;

static BLK_DMA: DmaPool = DmaPool::new(lay::BLK_DMA_VADDR, lay::BLK_DMA_SIZE);
dma_hal!(BlkHal, BLK_DMA);

/// The ledger's virtio-blk disk.
pub type Disk = ppn_microkit_support::disk::Disk<BlkHal>;

/// Brings up the disk on the layout's transport, its DMA region at physical `dma_paddr`.
///
/// # Safety
/// Call once. `lay::BLK_REGS_VADDR` must be this PD's uncached mapping of the disk's
/// virtio-mmio registers and `lay::BLK_DMA_VADDR` its mapping of `ledger_blk_dma`, whose
/// physical address is `dma_paddr` (ppn-layout, checked against the SDF by `ppn sdf check`).
pub unsafe fn open(dma_paddr: u64) -> Result<Disk, DiskError> {
    BLK_DMA.init(dma_paddr);
    // SAFETY: the caller's guarantees, passed on; BLK_DMA now holds the region's address.
    unsafe { Disk::new(lay::BLK_REGS_VADDR) }
}
