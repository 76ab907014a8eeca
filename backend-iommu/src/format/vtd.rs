//! Intel VT-d second-level paging entries (VT-d spec rev 4, §9.8; Linux `DMA_PTE_*`).
//!
//! | bit | meaning |
//! |---|---|
//! | 0 | R: read allowed |
//! | 1 | W: write allowed |
//! | 7 | PS: page size (a 2 MiB / 1 GiB leaf at levels 1 / 2) |
//! | 11 | SNP: snoop behaviour |
//! | 12..51 | address of the page or next table |
//!
//! An entry is present when R or W is set; non-leaf entries carry R|W because permissions are
//! the AND of every level.

use super::{addr_field, Format, Pte};
use p2p_core::access::Access;
use p2p_core::page::PageSizes;

/// R.
pub const READ: u64 = 1 << 0;
/// W.
pub const WRITE: u64 = 1 << 1;
/// PS.
pub const LARGE_PAGE: u64 = 1 << 7;
/// SNP.
pub const SNOOP: u64 = 1 << 11;

/// VT-d second-level tables.
#[derive(Debug, Clone, Copy, Default)]
pub struct VtdSecondLevel;

impl Format for VtdSecondLevel {
    const NAME: &'static str = "vt-d second level";
    const PAGE_SIZES: PageSizes = PageSizes::SIZE_4K
        .union(PageSizes::SIZE_2M)
        .union(PageSizes::SIZE_1G);
    const OAS: u32 = 52;

    fn table(table_phys: u64) -> u64 {
        table_phys | READ | WRITE
    }

    fn leaf(phys: u64, level: usize, access: Access, _mmio: bool) -> u64 {
        let mut pte = phys;
        if access.contains(Access::READ) {
            pte |= READ;
        }
        if access.contains(Access::WRITE) {
            pte |= WRITE;
        }
        if level > 0 {
            pte |= LARGE_PAGE;
        }
        pte
    }

    fn decode(pte: u64, level: usize) -> Pte {
        if pte & (READ | WRITE) == 0 {
            return Pte::Invalid;
        }
        let phys = addr_field(pte, Self::OAS);
        if level > 0 && pte & LARGE_PAGE == 0 {
            return Pte::Table(phys);
        }
        let mut access = Access::empty();
        access.set(Access::READ, pte & READ != 0);
        access.set(Access::WRITE, pte & WRITE != 0);
        Pte::Leaf { phys, access }
    }
}
