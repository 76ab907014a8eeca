//! Page-table entry formats. One trait, two real layouts: Intel VT-d second-level tables and ARM
//! LPAE stage-2 tables (4 KiB granule), both 4 levels over a 48-bit input address space.

pub mod arm;
pub mod vtd;

pub use arm::ArmLpaeS2;
pub use vtd::VtdSecondLevel;

use p2p_core::access::Access;
use p2p_core::page::PageSizes;

/// What an entry says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pte {
    /// Not present.
    Invalid,
    /// Points at the next-level table at this physical address.
    Table(u64),
    /// Maps a page or block at this physical address.
    Leaf {
        /// Output address.
        phys: u64,
        /// Permissions.
        access: Access,
    },
}

/// A page-table format. Level 0 holds 4 KiB leaves; level 1 2 MiB, level 2 1 GiB; level 3 is
/// the root.
pub trait Format: Send + Sync + std::fmt::Debug + 'static {
    /// Its name for messages.
    const NAME: &'static str;
    /// Leaf sizes it supports.
    const PAGE_SIZES: PageSizes;
    /// Input address bits.
    const IAS: u32 = 48;
    /// Output address bits.
    const OAS: u32;
    /// A non-leaf entry pointing at the table at `table_phys`.
    fn table(table_phys: u64) -> u64;
    /// A leaf at `level` mapping `phys` with `access`; `mmio` selects device memory attributes
    /// where the format has them. It must be `phys | leaf(0, level, access, mmio)` (the address
    /// field holds `phys` as it is, the other bits do not depend on it): a run of leaves is
    /// written as one attribute word ORed with each page's address.
    fn leaf(phys: u64, level: usize, access: Access, mmio: bool) -> u64;
    /// Decodes an entry found at `level`.
    fn decode(pte: u64, level: usize) -> Pte;
}

/// Bytes one entry at `level` covers.
pub const fn level_size(level: usize) -> u64 {
    1 << (12 + 9 * level)
}

/// The index into a level-`level` table for `iova`.
pub const fn index(iova: u64, level: usize) -> usize {
    ((iova >> (12 + 9 * level)) & 511) as usize
}

/// Bits 12..OAS of an address: the output-address field both formats use.
pub(crate) const fn addr_field(pte: u64, oas: u32) -> u64 {
    pte & (((1u64 << oas) - 1) & !0xfff)
}
